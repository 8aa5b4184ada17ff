"""Helpers for tests that run ``train_net.py`` in a subprocess on the tiny dataset."""

import os
import subprocess
import sys

import torch

from helpers import ROOT

CONFIG = os.path.join(ROOT, "tests", "configs", "tiny_efl.py")


def train_net(out, *opts, dataset_root, flags=(), config=CONFIG, wait=True, env=None):
    """``train_net.py [flags] --config-file config [opts]`` (default: the tiny config, 12
    iterations, checkpoints every 2) -> (exit status, output) or the running Popen (in a
    new process group). ``env``: more environment variables. One thread per process: on a
    loaded 2-core machine two OpenMP threads stall for seconds."""
    env = dict(os.environ, EFL_TINY_DATASET=dataset_root, OMP_NUM_THREADS="1", **(env or {}))
    cmd = [sys.executable, "train_net.py", *flags, "--config-file", config, *opts,
           f"train.output_dir={out}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if not wait:
        return proc
    output, _ = proc.communicate(timeout=600)
    return proc.returncode, output


def last_checkpoint(out):
    """The name in ``out/last_checkpoint`` ("" if none)."""
    try:
        with open(os.path.join(out, "last_checkpoint")) as f:
            return f.read().strip()
    except OSError:
        return ""


def assert_same(a, b, path="checkpoint"):
    """Equal nested checkpoint contents; tensors bitwise."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        diff = (a.double() - b.double()).abs().max()
        assert torch.equal(a, b), f"{path} differs (max abs diff {diff})"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def dataset_root(prefix):
    """The folder of the tiny dataset (for the subprocess's config)."""
    from detectron2.data import MetadataCatalog

    return os.path.dirname(MetadataCatalog.get(f"{prefix}_train").json_file)
