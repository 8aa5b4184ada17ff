"""efl.solver: schedules in epochs resolved from the training loader (on the embedded tiny
data), gradient clipping, and a short run of the improved detector through the Trainer."""

import json
import math
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler

from efl.engine import Trainer, plan_run
from efl.errors import InputError
from efl.solver import add_gradient_clipping, multistep_in_epochs
from helpers import ROOT, shrink_to_tiny


def tiny_improved_config(prefix, output_dir, kind="efl", epochs=2, batch=2):
    """configs/Synthetic/improved_{kind}.py shrunk to the tiny dataset."""
    cfg = LazyConfig.load(os.path.join(ROOT, f"configs/Synthetic/improved_{kind}.py"))
    shrink_to_tiny(cfg, prefix, output_dir)
    cfg.dataloader.train.total_batch_size = batch
    cfg.train.epochs = epochs
    cfg.train.checkpointer.period = 1000
    cfg.lr_multiplier.milestones = [1] if epochs > 1 else []
    cfg.lr_multiplier.warmup_epochs = 0.5
    return cfg


def test_epochs_resolve_to_iterations_from_the_loader(tiny_dataset, tmp_path):
    cfg = tiny_improved_config(tiny_dataset, str(tmp_path), epochs=3, batch=4)
    trainer = Trainer(cfg)
    # 40 square images (one aspect-ratio group), batches of 4, no RFS: 10 per epoch.
    assert trainer.plan.epoch_starts == [0, 10, 20, 30] and trainer.max_iter == 30
    sched = trainer.scheduler._multiplier
    assert abs(sched(0.0) - 0.001) < 1e-9  # linear warm-up over half an epoch (5 iterations)
    assert sched(5 / 30) == sched(9 / 30) == 1.0
    assert abs(sched(10 / 30) - 0.1) < 1e-12 and abs(sched(29 / 30) - 0.1) < 1e-12


def test_epochs_with_ceil_rounded_repeat_factors(tiny_dataset, tmp_path):
    cfg = tiny_improved_config(tiny_dataset, str(tmp_path), epochs=2, batch=4)
    cfg.dataloader.train.repeat_thresh = 0.3
    cfg.dataloader.train.repeat_rounding = "ceil"
    trainer = Trainer(cfg)
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
        DatasetCatalog.get(f"{tiny_dataset}_train"), 0.3
    )
    per_epoch = int(torch.ceil(factors - 1e-6).sum().item()) // 4
    assert per_epoch > 10  # the repeats lengthen the epoch
    assert trainer.plan.epoch_starts == [0, per_epoch, 2 * per_epoch]


def test_epochs_need_a_loader_that_knows_them(tiny_dataset, tmp_path):
    from detectron2.data import build_detection_train_loader

    cfg = tiny_improved_config(tiny_dataset, str(tmp_path))
    cfg.dataloader.train._target_ = build_detection_train_loader
    del cfg.dataloader.train.repeat_thresh
    with pytest.raises(InputError, match="train.epochs=2 needs a training loader"):
        Trainer(cfg)


def test_lr_in_epochs_rejects_bad_values():
    with pytest.raises(InputError, match="train.epochs is not set"):
        multistep_in_epochs(epoch_starts=None, milestones=[16, 22])
    with pytest.raises(InputError, match="milestones"):
        multistep_in_epochs(epoch_starts=[0, 10, 20], milestones=[2])
    with pytest.raises(InputError, match="milestones"):
        multistep_in_epochs(epoch_starts=[0, 10, 20, 30], milestones=[2, 1])


def test_gradient_clipping_bounds_the_total_norm():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(4))
    optimizer = add_gradient_clipping(torch.optim.SGD([a, b], lr=1.0), max_norm=35.0)
    assert type(optimizer).__name__ == "SGDWithGradientClip"
    a.grad = torch.full((3,), 30.0)
    b.grad = torch.full((4,), 40.0)  # total norm sqrt(3 * 900 + 4 * 1600) = 95.4
    optimizer.step()
    step = torch.cat([a.detach(), b.detach()]).neg()
    assert math.isclose(step.norm().item(), 35.0, rel_tol=1e-5)
    direction = torch.tensor([30.0] * 3 + [40.0] * 4) / math.sqrt(3 * 900 + 4 * 1600)
    torch.testing.assert_close(step / step.norm(), direction, rtol=1e-5, atol=0)
    a.grad = torch.full((3,), 1.0)  # below the limit: unchanged
    b.grad = torch.zeros(4)
    before = a.detach().clone()
    optimizer.step()
    torch.testing.assert_close(before - a.detach(), torch.ones(3))
    # Checkpoints keep working: a new clipped optimizer takes the state (lr 1.0 over its
    # own 0.5) and steps exactly as the saved one does.
    c, d = (torch.nn.Parameter(p.detach().clone()) for p in (a, b))
    resumed = add_gradient_clipping(torch.optim.SGD([c, d], lr=0.5), max_norm=35.0)
    resumed.load_state_dict(optimizer.state_dict())
    for opt, (p, q) in ((optimizer, (a, b)), (resumed, (c, d))):
        p.grad, q.grad = torch.full((3,), 30.0), torch.full((4,), 40.0)
        opt.step()
    assert torch.equal(c, a) and torch.equal(d, b)


@pytest.mark.slow
def test_improved_detector_trains_and_evaluates(tiny_dataset, tmp_path):
    """Five iterations (one epoch of 8-image batches) of the improved EFL detector on the
    tiny data, with clipping and an LR in epochs, then LVIS evaluation."""
    out = str(tmp_path / "run")
    cfg = tiny_improved_config(tiny_dataset, out, epochs=1, batch=8)
    trainer = Trainer(cfg)
    assert trainer.max_iter == 5 and type(trainer.optimizer).__name__ == "SGDWithGradientClip"
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    assert "bbox" in results and math.isfinite(results["bbox"]["AP"])
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    losses = [r for r in rows if "loss_iou" in r]
    assert [r["iteration"] for r in losses] == list(range(5))
    assert all(math.isfinite(r["loss_box_reg"]) for r in losses)
    assert losses[0]["lr"] < 0.01 < losses[-1]["lr"]  # warm-up over half an epoch
    state = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["model"]
    assert state["cls_loss.pos_grad"].sum() > 0 and "head.iou_pred.weight" in state
    with open(os.path.join(out, "run_info.json")) as f:
        info = json.load(f)
    assert info["meta_architecture"] == "ATSSRetinaNet" and info["max_iter"] == 5


def test_resume_follows_the_epochs_of_the_checkpointed_data_stream(tiny_dataset, tmp_path):
    """Stochastic RFS rounding: epoch lengths depend on the loader's seed; a run resumed
    with another seed continues the checkpoint's stream and its schedule."""

    def config(seed):
        cfg = tiny_improved_config(tiny_dataset, str(tmp_path), epochs=3, batch=4)
        cfg.dataloader.train.repeat_thresh = 0.3
        cfg.dataloader.train.seed = seed
        return cfg

    first = Trainer(config(1))
    other = next(s for s in range(2, 50)
                 if plan_run(config(s)).epoch_starts != first.plan.epoch_starts)
    first.iter = 7
    first.scheduler.step()  # a scheduler state that is not the initial one
    first.checkpointer.save("model_0000007")
    assert plan_run(config(other)).epoch_starts != first.plan.epoch_starts
    with pytest.raises(InputError, match="plan_run\\(cfg, resume=True\\)"):
        Trainer(config(other)).resume_or_load(resume=True)  # planned as a fresh run
    resumed = Trainer(config(other), plan_run(config(other), resume=True))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 8 and resumed.data_loader.dataset.seed == 1
    assert resumed.plan.epoch_starts == first.plan.epoch_starts
    assert resumed.max_iter == first.max_iter == first.plan.epoch_starts[-1]
    assert resumed.scheduler.last_epoch == first.scheduler.last_epoch
    with open(os.path.join(str(tmp_path), "run_info.json")) as f:
        assert json.load(f)["max_iter"] == first.max_iter
