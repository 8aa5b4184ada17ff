"""The run guarantees on the YAML route (efl.engine.YAMLTrainer, tools/train_yaml.py;
docs/yaml-route.md): with SOLVER.AMP.ENABLED the loss statistics equal those of a float32
run (Detectron2's AMPTrainer scaler attached and committed after each step); SIGTERM ->
checkpoint of the current iteration -> exit 143 -> --resume ends bitwise equal to an
uninterrupted run. (The activity note on this route: tests/test_yaml_route.py.)"""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.engine import AMPTrainer
from detectron2.utils.env import seed_all_rng

from efl.engine import YAMLTrainer
from efl.losses import statistics_losses
from helpers import ROOT, tiny_yaml_config, tiny_yaml_opts, yaml_config_file
from runs import assert_same, dataset_root, last_checkpoint

KEYS = ("pos_grad", "neg_grad", "pos_neg")
CONFIG = "efl_retinanet_R_50_FPN"


def loss_state(model):
    [(name, loss)] = statistics_losses(model)
    return name, {k: getattr(loss, k).clone() for k in KEYS}


@pytest.mark.slow
def test_amp_statistics_equal_a_float32_run(tiny_dataset, tmp_path, monkeypatch):
    """Same weights and batches, float32 vs SOLVER.AMP.ENABLED (Detectron2's AMPTrainer;
    its cuda autocast does nothing on CPU, so the step order scale -> backward -> step ->
    update runs in float32) with a scale that doubles every step: the same loss state, in
    the model and in model_final.pth. Without the scaler attached it is 2^10-2^14 times
    larger; without the commit after each step the checkpoint lacks the last step."""
    states, saved = {}, {}
    for mode in ("fp32", "amp"):
        cfg = tiny_yaml_config(CONFIG, tiny_dataset, str(tmp_path / mode), max_iter=5)
        cfg.merge_from_list(["SOLVER.AMP.ENABLED", mode == "amp", "DATASETS.TEST", (), "SEED", 0])
        seed_all_rng(0)  # the same initial weights
        with monkeypatch.context() as patch:
            if mode == "amp":  # Detectron2's AMPTrainer asserts CUDA
                patch.setattr(torch.cuda, "is_available", lambda: True)
            trainer = YAMLTrainer(cfg)
            if mode == "amp":
                assert isinstance(trainer._trainer, AMPTrainer)
                [(_, loss)] = statistics_losses(trainer.model)
                assert loss._grad_scaler is trainer._trainer.grad_scaler  # attached at once
                # A CPU scaler whose scale doubles after every step (followed at train()).
                trainer._trainer.grad_scaler = torch.amp.GradScaler(
                    "cpu", init_scale=2.0 ** 10, growth_interval=1)
            trainer.resume_or_load(resume=False)
            trainer.train()
        name, states[mode] = loss_state(trainer.model)
        final = torch.load(tmp_path / mode / "model_final.pth", weights_only=True)["model"]
        saved[mode] = {k: final[f"{name}.{k}"] for k in KEYS}
    assert trainer._trainer.grad_scaler.get_scale() == 2.0 ** 15
    assert states["fp32"]["pos_grad"].sum() > 0
    for k in KEYS:
        torch.testing.assert_close(states["amp"][k], states["fp32"][k], rtol=1e-5, atol=0)
        torch.testing.assert_close(saved["amp"][k], saved["fp32"][k], rtol=1e-5, atol=0)


def train_yaml(out, *opts, dataset_root, flags=(), wait=True):
    """``tools/train_yaml.py [flags] --config-file <the YAML> <tiny opts> opts`` with the
    tiny dataset (tests/yaml_train.py), in a new process group -> (status, output) or Popen."""
    env = dict(os.environ, EFL_TINY_DATASET=dataset_root, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(ROOT, "tests", "yaml_train.py"), *flags,
           "--config-file", yaml_config_file(CONFIG),
           *tiny_yaml_opts("efl_tiny", out, max_iter=16), *opts]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if not wait:
        return proc
    output, _ = proc.communicate(timeout=600)
    return proc.returncode, output


@pytest.mark.slow
def test_sigterm_then_resume_equals_uninterrupted_run(tiny_dataset, tmp_path):
    root = dataset_root(tiny_dataset)
    opts = ["SOLVER.CHECKPOINT_PERIOD", "3", "SEED", "3", "DATASETS.TEST", "()"]
    full, stopped = str(tmp_path / "full"), str(tmp_path / "stopped")
    uninterrupted = train_yaml(full, *opts, dataset_root=root, wait=False)  # meanwhile:
    proc = train_yaml(stopped, *opts, dataset_root=root, wait=False)
    try:  # SIGTERM to the process group after the first periodic checkpoint (iteration 2)
        deadline = time.time() + 300
        while not last_checkpoint(stopped) and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGTERM)
    finally:
        output, _ = proc.communicate(timeout=600)
        full_output, _ = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, full_output[-3000:]
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "SIGTERM received during iteration" in output, output[-3000:]
    name = last_checkpoint(stopped)
    assert name != "model_final.pth", "signalled too late"
    saved = int(name[len("model_"):-len(".pth")])
    ckpt = torch.load(os.path.join(stopped, name), weights_only=True)
    assert ckpt["iteration"] == saved and f"stopped after iteration {saved}" in output
    assert {"ranks", "data_loader"} <= ckpt["trainer"]["hooks"]["ResumeState"].keys()

    code, output = train_yaml(stopped, *opts, flags=["--resume"], dataset_root=root)
    assert code == 0, output[-3000:]
    assert f"Starting training from iteration {saved + 1}" in output
    a = torch.load(os.path.join(full, "model_final.pth"), weights_only=True)
    b = torch.load(os.path.join(stopped, "model_final.pth"), weights_only=True)
    [pos_grad] = [v for k, v in a["model"].items() if k.endswith(".pos_grad")]
    assert pos_grad.sum() > 0 and a["trainer"]["_trainer"]["optimizer"]["state"]
    assert_same(a, b)  # model + loss state, optimizer, scheduler, RNG states, normaliser, seed


def test_bad_override_is_one_paragraph_and_exit_2(tiny_dataset, tmp_path):
    code, output = train_yaml(str(tmp_path), "SOLVER.NO_SUCH_KEY", "1",
                              dataset_root=dataset_root(tiny_dataset))
    assert code == 2, output[-3000:]
    assert "ERROR:" in output and "SOLVER.NO_SUCH_KEY" in output and "Traceback" not in output


def test_a_default_trainer_subclass_gets_the_guarantees(tiny_dataset, tmp_path):
    """docs/yaml-route.md's example: Detectron2's stock DefaultTrainer plus two calls."""
    from detectron2.engine import DefaultTrainer, hooks

    from efl.checkpoint import EFLCheckpointer
    from efl.engine import (GradScalerCommit, PreemptionCheckpointer, ResumeState,
                            register_run_guarantees, resume_or_load)
    from efl.engine.activity import EFLActivityCheck

    class MyTrainer(DefaultTrainer):
        def __init__(self, cfg):
            super().__init__(cfg)
            register_run_guarantees(self, cfg.SOLVER.CHECKPOINT_PERIOD)

        def resume_or_load(self, resume=True):
            resume_or_load(self, self.cfg.MODEL.WEIGHTS, resume)

    cfg = tiny_yaml_config(CONFIG, tiny_dataset, str(tmp_path))
    cfg.DATASETS.TEST = ()
    trainer = MyTrainer(cfg)
    kinds = [type(h) for h in trainer._hooks]
    periodic = kinds.index(hooks.PeriodicCheckpointer)
    assert kinds.index(GradScalerCommit) < kinds.index(ResumeState) < periodic
    assert kinds[-2:] == [EFLActivityCheck, PreemptionCheckpointer]
    assert isinstance(trainer.checkpointer, EFLCheckpointer)
    assert trainer._hooks[periodic].checkpointer is trainer.checkpointer
    assert trainer.checkpointer.checkpointables["trainer"] is not None
    trainer.resume_or_load(resume=True)  # nothing to resume: starts at 0
    assert trainer.start_iter == 0
