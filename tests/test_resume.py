"""Crash and resume: a run killed with SIGKILL and rerun with --resume ends with the same
weights, optimizer state and EFL state as an uninterrupted run (bitwise); checkpoints are
written atomically; loading a checkpoint says what it did not initialise, and --resume
refuses one that does not fit the model."""

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from efl.checkpoint import EFLCheckpointer
from efl.errors import CheckpointError
from helpers import ROOT, TINY_CLASSES, tiny_lazy_config
from runs import assert_same, dataset_root, last_checkpoint, train_net


def unsmoothed_metrics(out):
    """Per iteration, the metrics.json values that are not medians over a window (the
    losses are: their history is not part of a checkpoint): EFL summaries and LR."""
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    return {r["iteration"]: {k: v for k, v in r.items() if k.startswith("efl/") or k == "lr"}
            for r in rows if "total_loss" in r}


def kill_delays(seed):
    """Random delays (s) before a kill, from ``$EFL_KILL_SEED`` (default ``seed``); the
    seed is printed, shown with the output of a failing test, to run it again."""
    seed = int(os.environ.get("EFL_KILL_SEED", seed))
    print(f"kill delays: EFL_KILL_SEED={seed}")
    return random.Random(seed)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tiny_dataset, tmp_path):
    """Repeat-factor sampling with stochastic rounding, one DataLoader worker (it has
    prefetched past the checkpoint when the kill comes), random flips."""
    rng = kill_delays(0)
    root = dataset_root(tiny_dataset)
    opts = ["dataloader.train.repeat_thresh=0.3", "train.max_iter=40"]
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")

    uninterrupted = train_net(full, *opts, dataset_root=root, wait=False)  # meanwhile:
    proc = train_net(killed, *opts, dataset_root=root, wait=False)
    try:  # kill after the checkpoint of iteration 6 (index 5), at a random moment
        deadline = time.time() + 300
        while last_checkpoint(killed) < "model_0000005.pth" and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.02)
        delay = rng.uniform(0, 0.3)
        print(f"kill {delay:.3f} s after the checkpoint")
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.communicate()
        output, _ = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, output[-3000:]
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(killed, "model_final.pth")), "killed too late"
    resumed_from = last_checkpoint(killed)

    code, output = train_net(killed, *opts, flags=["--resume"], dataset_root=root)
    assert code == 0, output[-3000:]
    start = int(resumed_from[len("model_"):-len(".pth")]) + 1
    assert f"Starting training from iteration {start}" in output

    a = torch.load(os.path.join(full, "model_final.pth"), weights_only=True)
    b = torch.load(os.path.join(killed, "model_final.pth"), weights_only=True)
    assert {"cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg"} <= a["model"].keys()
    assert a["trainer"]["_trainer"]["optimizer"]["state"]
    assert "loss_normalizer" in a["trainer"]["hooks"]["ResumeState"]["ranks"][0]["model_floats"]
    assert_same(a, b)  # model + EFL buffers, optimizer, scheduler, RNG states, normaliser, seed
    # The same trajectory (metrics.json of the killed run was cut back to the checkpoint on
    # resume, then continued).
    metrics = unsmoothed_metrics(full)
    assert sorted(metrics) == list(range(40)) and "efl/pos_neg_r" in metrics[39]
    assert metrics == unsmoothed_metrics(killed)


@pytest.mark.slow
def test_kill_during_save_never_leaves_a_bad_last_checkpoint(tmp_path):
    """A process saves checkpoints slowly in a loop; SIGKILL at random moments."""
    rng = kill_delays(0)
    leftovers = 0
    for round_ in range(3):
        out = tmp_path / f"round{round_}"
        out.mkdir()
        proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "faults.py"), str(out), "0.05"],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            for line in proc.stdout:  # 4 chunks of 0.05 s: a save takes ~0.2 s
                if line.strip() == "saving 2":
                    break
            delay = rng.uniform(0, 0.15)  # inside the ~0.2 s save, mostly
            print(f"round {round_}: kill {delay:.3f} s into the save of checkpoint 2")
            time.sleep(delay)
            proc.kill()
        finally:
            proc.communicate()
        name = (out / "last_checkpoint").read_text()
        ckpt = torch.load(out / name, weights_only=True)
        i = ckpt["iteration"]
        assert name == f"model_{i:07d}.pth" and i >= 1
        assert torch.all(ckpt["model"]["weight"] == i)
        leftovers += any(".tmp-" in p.name for p in out.iterdir())
        # The next run removes the temporary of the killed save.
        EFLCheckpointer(torch.nn.Linear(256, 256), str(out)).resume_or_load("", resume=True)
        assert not any(".tmp-" in p.name for p in out.iterdir())
    assert leftovers >= 1, "the kills should mostly land inside a save"


@pytest.fixture(scope="module")
def efl_checkpoint(tiny_dataset, tmp_path_factory):
    """An output folder with model_final.pth of the tiny EFL model (with EFL state)."""
    from efl.engine import Trainer

    out = str(tmp_path_factory.mktemp("ckpt"))
    model = Trainer.build_model(tiny_lazy_config("efl", tiny_dataset, out))
    EFLCheckpointer(model, out).save("model_final", iteration=1)
    return out


def test_init_from_stock_retinanet_checkpoint_says_efl_starts_fresh(tiny_dataset, tmp_path, caplog):
    from efl.engine import Trainer

    # A stock (focal-loss) RetinaNet checkpoint: no EFL state.
    focal = Trainer.build_model(tiny_lazy_config("focal", tiny_dataset, str(tmp_path)))
    path = str(tmp_path / "stock_retinanet.pth")
    torch.save({"model": focal.state_dict()}, path)
    model = Trainer.build_model(tiny_lazy_config("efl", tiny_dataset, str(tmp_path)))
    with caplog.at_level(logging.INFO, logger="efl.checkpoint"):
        EFLCheckpointer(model, str(tmp_path / "out")).resume_or_load(path, resume=False)
    assert f"EFL state not in checkpoint {path}: cls_loss starts from g = 1 (focal loss)" in caplog.text
    assert torch.equal(model.cls_loss.pos_neg, torch.ones(TINY_CLASSES))
    assert torch.equal(model.head.cls_score.weight, focal.head.cls_score.weight)


def test_init_from_checkpoint_with_other_class_count(efl_checkpoint, tiny_dataset, tmp_path, caplog):
    out = efl_checkpoint
    cfg = tiny_lazy_config("efl", tiny_dataset, str(tmp_path))
    cfg.model.num_classes = TINY_CLASSES - 2  # a model for another dataset
    cfg.model.cls_loss.class_groups = None
    from detectron2.config import instantiate

    model = instantiate(cfg.model)
    path = os.path.join(out, "model_final.pth")
    with caplog.at_level(logging.INFO, logger="efl.checkpoint"):
        EFLCheckpointer(model, str(tmp_path / "out")).resume_or_load(path, resume=False)
    text = caplog.text
    assert f"EFL state in checkpoint {path} is for {TINY_CLASSES} classes, the model has " \
           f"{TINY_CLASSES - 2}: cls_loss starts from g = 1 (focal loss)" in text
    assert "Initialised fresh, shape differs" in text and "head.cls_score.weight" in text


def test_resume_with_mismatched_shapes_is_an_error_naming_the_tensor(efl_checkpoint, tiny_dataset):
    out = efl_checkpoint
    from detectron2.config import instantiate

    cfg = tiny_lazy_config("efl", tiny_dataset, out)
    cfg.model.head.conv_dims = [16]  # another model in the same output_dir
    model = instantiate(cfg.model)
    with pytest.raises(CheckpointError, match=r"Cannot resume from .*model_final\.pth: it does "
                       r"not fit the model \(head\.cls_subnet\.0\.weight has shape \(32, 32, 3, 3\) "
                       r"in the checkpoint but \(16, 32, 3, 3\)"):
        EFLCheckpointer(model, out).resume_or_load("", resume=True)


def test_resume_from_truncated_or_missing_checkpoint_is_an_error(efl_checkpoint, tmp_path):
    out = efl_checkpoint
    run = tmp_path / "run"
    run.mkdir()
    data = open(os.path.join(out, "model_final.pth"), "rb").read()
    (run / "model_0000001.pth").write_bytes(data[: len(data) // 2])  # a stock non-atomic save
    (run / "last_checkpoint").write_text("model_0000001.pth")
    model = torch.nn.Linear(1, 1)
    with pytest.raises(CheckpointError, match=r"Cannot read the checkpoint to resume from, "
                       r".*model_0000001\.pth: .*Point last_checkpoint at an older checkpoint"):
        EFLCheckpointer(model, str(run)).resume_or_load("", resume=True)
    (run / "last_checkpoint").write_text("model_0000003.pth")
    with pytest.raises(CheckpointError, match=r"last_checkpoint names .*model_0000003\.pth, "
                       "which does not exist"):
        EFLCheckpointer(model, str(run)).resume_or_load("", resume=True)
    with pytest.raises(CheckpointError,
                       match=r"train\.init_checkpoint=/nonexistent\.pth: file not found"):
        EFLCheckpointer(model, str(run)).resume_or_load("/nonexistent.pth", resume=False)
