"""Repeatable runs: the same tiny training (EFL, and the stock RetinaNet whose focal loss
is a TorchScript function), built with ``Trainer(cfg)`` (no ``default_setup``), gives
bitwise-equal weights (and EFL state) twice in one process, whatever an earlier test left
in the global generators, and in a fresh process (numpy's global generator starts from OS
entropy there). ``train.seed`` (0 in configs/Synthetic/) decides the initial weights and
the data stream: :func:`efl.engine.plan_run` seeds before drawing either. TorchScript runs
unoptimised here and in the child process (conftest.py's ``same_torchscript_execution``)."""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from deploy_models import one_thread
from efl.records import RunRecord, cpu_model
from helpers import ROOT, tiny_lazy_config
from runs import assert_same, dataset_root

ITERS = 8  # the focal loss's executor changes after its first calls: a few more

# The subprocess: the tiny dataset from $EFL_TINY_DATASET, the same training, one thread.
_CHILD = """
import os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from helpers import tiny_lazy_config
from efl.data.lvis import register_lvis_format
from efl.data.synthetic import dataset_paths
import torch
from efl.engine import Trainer
torch._C._set_graph_executor_optimize(False)  # as conftest.py's same_torchscript_execution
paths = dataset_paths(os.environ["EFL_TINY_DATASET"])
register_lvis_format("efl_tiny_train", paths["train_json"], paths["image_root"])
register_lvis_format("efl_tiny_val", paths["val_json"], paths["image_root"])
cfg = tiny_lazy_config(sys.argv[4], "efl_tiny", sys.argv[2], max_iter=int(sys.argv[3]))
cfg.train.eval_period = 0
cfg.train.checkpointer.period = 1000
Trainer(cfg).train()
"""


def train(prefix, out, kind="efl"):
    """The tiny training (``kind``: "efl" or "focal"), ITERS iterations, in this process ->
    the model's state_dict."""
    from efl.engine import Trainer

    cfg = tiny_lazy_config(kind, prefix, out, max_iter=ITERS)
    cfg.train.eval_period = 0
    cfg.train.checkpointer.period = 1000  # model_final.pth only
    with one_thread():
        trainer = Trainer(cfg)
        trainer.train()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def disturb_global_generators(n):
    """What an earlier test may leave behind: draws from every global generator."""
    random.random()
    np.random.rand(n)
    torch.rand(n)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["efl", "focal"])
def test_same_training_twice_in_one_process_is_bitwise_equal(tiny_dataset, tmp_path, kind):
    disturb_global_generators(3)
    first = train(tiny_dataset, str(tmp_path / "a"), kind)
    disturb_global_generators(7)
    second = train(tiny_dataset, str(tmp_path / "b"), kind)
    assert any(k.endswith("cls_loss.pos_neg") for k in first) == (kind == "efl")
    assert not torch.equal(first["head.cls_score.weight"], torch.zeros_like(first["head.cls_score.weight"]))
    assert_same(first, second, "model")
    record = RunRecord.read(str(tmp_path / "a"))  # what the bits depend on, recorded
    assert record.seed == 0 and record.cpu == cpu_model() and record.torch_threads == 1
    assert record.cpu_capability == torch.backends.cpu.get_cpu_capability()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["efl", "focal"])
def test_same_training_in_another_process_is_bitwise_equal(tiny_dataset, tmp_path, kind):
    here = train(tiny_dataset, str(tmp_path / "here"), kind)
    out = str(tmp_path / "there")
    env = dict(os.environ, EFL_TINY_DATASET=dataset_root(tiny_dataset), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", _CHILD, ROOT, out, str(ITERS), kind], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    there = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu",
                       weights_only=False)["model"]
    assert any(k.startswith("cls_loss.") for k in here) == (kind == "efl")
    assert_same(here, there, "model")
