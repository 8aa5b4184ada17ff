"""tools/sweep.py and efl.experiments: the grid, bad grids (one paragraph, exit 2, nothing
started), skip / resume of a cut run on the tiny config, one SLURM job per run."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT
from runs import CONFIG, dataset_root
from efl.errors import InputError
from efl.experiments.grid import expand_grid, parse_seeds, parse_set, read_manifest


def _cli():
    spec = importlib.util.spec_from_file_location("sweep_cli", os.path.join(ROOT, "tools", "sweep.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def _loss_key():
    """The tiny config's loss node (``model.cls_loss``, ``model.efl`` before the rename)."""
    from detectron2.config import LazyConfig

    return "model.cls_loss" if "cls_loss" in LazyConfig.load(CONFIG).model else "model.efl"


def test_grid_is_the_product_of_the_sets_times_the_seeds():
    sets = [parse_set("model.cls_loss.scale_factor=0,8"), parse_set("model.cls_loss.gamma_b=1,2")]
    runs = expand_grid(sets, parse_seeds("0,1"))
    assert len(runs) == 8
    assert [r.folder for r in runs[:3]] == ["scale_factor=0-gamma_b=1_seed0",
                                            "scale_factor=0-gamma_b=1_seed1",
                                            "scale_factor=0-gamma_b=2_seed0"]
    assert runs[-1].setting == "scale_factor=8,gamma_b=2" and runs[-1].seed == 1
    assert runs[-1].train_opts("/o") == ["model.cls_loss.scale_factor=8",
                                         "model.cls_loss.gamma_b=2", "train.output_dir=/o",
                                         "train.seed=1"]
    # two keys with the same last part keep their whole names
    same = expand_grid([("a.lr", ["1"]), ("b.lr", ["2"])], [0])
    assert same[0].setting == "a.lr=1,b.lr=2"
    assert [r.setting for r in expand_grid([], [3, 4])] == ["base", "base"]
    for bad in ("model.x", "model.x=", "model.x=1,,2", "=1", "model.x=1,1", "train.seed=1,2"):
        with pytest.raises(InputError):
            parse_set(bad)
    for bad in ("", "a", "0,0", "-1"):
        with pytest.raises(InputError):
            parse_seeds(bad)
    with pytest.raises(InputError, match="more than once"):
        expand_grid([("a.b", ["1"]), ("a.b", ["2"])], [0])


@pytest.mark.parametrize("args, message", [
    (["--set", "{loss}.scale_factr=0,8"], "Unknown config key"),
    (["--set", "{loss}.scale_factor="], "empty value list"),
    (["--set", "{loss}.scale_factor=0,-1"], "grid point scale_factor=-1"),
    (["--set", "train.max_iter=4,abc"], "is not a number"),
    (["--seeds", "0,x"], "--seeds"),
    (["--set", "optimizer.lr=0.1", "train.output_dir=x"], "the sweep sets"),
    (["--set", "optimizer.lr=0.1", "--bogus"], "only Detectron2-style overrides"),
])
def test_bad_grids_say_one_paragraph_exit_2_and_start_nothing(args, message, tiny_dataset,
                                                              tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EFL_TINY_DATASET", dataset_root(tiny_dataset))
    args = [a.replace("{loss}", _loss_key()) for a in args]
    code = _cli().main(["--config-file", CONFIG, "--out", str(tmp_path / "sweep"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len([x for x in err.splitlines() if x.startswith("[sweep]")]) == 1
    assert not (tmp_path / "sweep").exists()


def test_a_folder_of_another_grid_or_not_a_run_is_refused(tiny_dataset, tmp_path, monkeypatch,
                                                          capsys):
    monkeypatch.setenv("EFL_TINY_DATASET", dataset_root(tiny_dataset))
    out = tmp_path / "sweep"
    os.makedirs(out / "lr=0.1_seed0")
    (out / "lr=0.1_seed0" / "notes.txt").write_text("mine")
    argv = ["--config-file", CONFIG, "--out", str(out), "--set", "optimizer.lr=0.1"]
    assert _cli().main(argv) == 2 and "is not a run of this sweep" in capsys.readouterr().err
    (out / "lr=0.1_seed0" / "sweep_run.json").write_text(json.dumps(
        {"config_file": CONFIG, "opts": ["optimizer.lr=0.1", "train.max_iter=3"], "seed": 0}))
    assert _cli().main(argv) == 2 and "holds a run with other settings" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["lr=0.1_seed0"]  # no manifest, nothing started


def test_slurm_mode_submits_one_job_per_unfinished_run(tiny_dataset, tmp_path, monkeypatch):
    from efl.experiments.sweep import Sweep

    monkeypatch.setenv("EFL_TINY_DATASET", dataset_root(tiny_dataset))
    calls = []

    class Job:
        def __init__(self, n):
            self.job_id = str(100 + n)

    def fake_submit(train_args, **job):
        calls.append((train_args, job))
        return Job(len(calls))

    out = str(tmp_path / "sweep")
    sweep = Sweep(CONFIG, [("optimizer.lr", ["0.01", "0.02"])], [0, 1], ["train.max_iter=12"],
                  out, local=False, log=lambda m: None)
    cut = sweep.folder(sweep.runs[1])
    os.makedirs(cut)
    sweep._write_stamp(sweep.runs[1])
    open(os.path.join(cut, "last_checkpoint"), "w").write("model_0000005.pth")
    jobs = sweep.submit(fake_submit, nodes=2, gpus_per_node=8, timeout_min=60)
    assert [j for _, j in jobs] == ["101", "102", "103", "104"]
    args, job = calls[1]
    assert args[0] == "--resume" and calls[0][0][0] == "--config-file"  # the cut run resumes
    assert args[-3:] == ["optimizer.lr=0.01", f"train.output_dir='{cut}'", "train.seed=1"]
    assert job == {"job_dir": os.path.join(cut, "slurm"), "name": "lr=0.01_seed1", "nodes": 2,
                   "gpus_per_node": 8, "timeout_min": 60}
    # again: submitted and not finished -> left alone; --resubmit submits them again
    assert sweep.submit(fake_submit) == [] and len(calls) == 4
    assert len(sweep.submit(fake_submit, resubmit=True)) == 4
    assert read_manifest(out)["runs"][3]["folder"] == "lr=0.02_seed1"


@pytest.mark.slow
def test_a_killed_sweep_resumes_its_cut_run_and_a_rerun_completes_the_grid(tiny_dataset,
                                                                           tmp_path):
    """Kill the sweep (and its training) after the first run's first checkpoint; rerunning
    resumes that run, trains the second, and a third call trains nothing."""
    out = tmp_path / "sweep"
    env = dict(os.environ, EFL_TINY_DATASET=dataset_root(tiny_dataset), OMP_NUM_THREADS="1",
               PYTHONPATH=os.path.join(ROOT, "projects", "EFL"))
    cmd = [sys.executable, os.path.join(ROOT, "tools", "sweep.py"), "--config-file", CONFIG,
           "--set", "optimizer.lr=0.01,0.005", "--seeds", "0", "--out", str(out)]
    first = out / "lr=0.01_seed0"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (first / "last_checkpoint").exists() and proc.poll() is None:
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its train_net.py
        proc.communicate()
    assert not (first / "results.json").exists() and not (out / "lr=0.005_seed0").exists()
    resumed_from = (first / "last_checkpoint").read_text().strip()  # model_000000N.pth
    start = int(resumed_from[len("model_"):-len(".pth")]) + 1

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "1/2 lr=0.01_seed0: resuming" in rerun.stdout
    assert "2/2 lr=0.005_seed0: training" in rerun.stdout
    assert "2/2 runs finished" in rerun.stdout
    for name in ("lr=0.01_seed0", "lr=0.005_seed0"):
        with open(out / name / "results.json") as f:
            assert json.load(f)["iteration"] == 12
    assert f"Starting training from iteration {start}" in (first / "log.txt").read_text()

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("finished, skipped") == 2


def test_a_run_is_finished_when_its_results_are_at_max_iter(tmp_path):
    from efl.records import RunRecord, run_finished

    assert not run_finished(str(tmp_path))  # nothing there
    RunRecord(max_iter=10).write(str(tmp_path))
    assert not run_finished(str(tmp_path))  # started, never evaluated
    for iteration, done in ((8, False), (10, True)):
        (tmp_path / "results.json").write_text(json.dumps({"iteration": iteration, "results": {}}))
        assert run_finished(str(tmp_path)) is done
    (tmp_path / "results.json").write_text('{"iteration": 10, "resu')  # cut off
    assert not run_finished(str(tmp_path))
