"""efl.io: the shared file helpers (pid_alive, replace_dir, write_json_atomic)."""

import json
import os
import subprocess
import sys

import pytest

from efl.io import pid_alive, remove_stale_dirs, replace_dir, temporary_dir, write_json_atomic


def test_pid_alive_tells_a_running_process_from_an_ended_one():
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process (until reused, which takes a while)
    assert not pid_alive(child.pid)


def _folder(path, text):
    os.makedirs(path)
    with open(os.path.join(path, "file.txt"), "w") as f:
        f.write(text)


def _read(path):
    with open(os.path.join(path, "file.txt")) as f:
        return f.read()


def test_replace_dir_puts_the_new_folder_in_place_and_leaves_nothing_else(tmp_path):
    new, dst = str(tmp_path / ".new"), str(tmp_path / "out")
    _folder(new, "first")
    replace_dir(new, dst)  # no folder there yet
    assert _read(dst) == "first" and sorted(os.listdir(tmp_path)) == ["out"]
    _folder(new, "second")
    replace_dir(new, dst)  # replaces the old one, which is deleted
    assert _read(dst) == "second" and sorted(os.listdir(tmp_path)) == ["out"]


def test_leftovers_of_killed_processes_are_removed_and_nothing_else(tmp_path):
    dst = tmp_path / "sub" / "out"
    mine = temporary_dir(dst)  # parent created; this process's temporary is kept
    assert os.path.dirname(mine) == str(tmp_path / "sub")
    assert os.path.basename(mine).startswith(f".out.tmp-{os.getpid()}-")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = [f".out.tmp-{child.pid}-x", f".out.old-{child.pid}-y"]
    kept = ["out", ".out.tmp-notapid", f".other.tmp-{child.pid}-z", os.path.basename(mine)]
    for name in dead + kept:
        os.makedirs(tmp_path / "sub" / name, exist_ok=True)
    remove_stale_dirs(dst)
    assert sorted(os.listdir(tmp_path / "sub")) == sorted(kept)


def test_replace_dir_that_fails_keeps_the_old_folder(tmp_path):
    dst = str(tmp_path / "out")
    _folder(dst, "old")
    with pytest.raises(OSError):
        replace_dir(str(tmp_path / "missing"), dst)
    assert _read(dst) == "old" and sorted(os.listdir(tmp_path)) == ["out"]


def test_write_json_atomic_writes_numpy_and_torch_scalars_and_no_temporary(tmp_path):
    import numpy as np
    import torch

    path = str(tmp_path / "new" / "a.json")  # the folder is created
    write_json_atomic(path, {"x": np.float32(0.5), "y": torch.tensor(2.0)}, indent=1)
    assert json.loads(open(path).read()) == {"x": 0.5, "y": 2.0}
    assert os.listdir(tmp_path / "new") == ["a.json"]
