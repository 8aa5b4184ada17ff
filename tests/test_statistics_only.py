"""Statistics for every loss (issue 23.2): SigmoidFocalLoss / QualityFocalLoss with
``record_statistics=True`` record EFL's per-class state through the same tap without
changing the loss, its gradient or a training (bitwise); off, they have no state at all.
The finders of losses with state (statistics_losses, the activity note) and the YAML key."""

import copy
import logging
import os

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.engine import TrainerBase
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from efl import (EqualizedFocalLoss, EqualizedQualityFocalLoss, QualityFocalLoss,
                 SigmoidFocalLoss, add_efl_config, statistics_losses)
from efl.config import cls_loss_from_config
from efl.engine.activity import EFLActivityCheck
from efl.errors import ConfigError
from efl.losses import per_class_statistics
from helpers import ROOT

K = 7
GROUPS = ["f", "f", "c", "c", "r", "r", "r"]


def batch(seed=0, m=300, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(m, K, generator=gen, dtype=torch.float64) * 3 - 2).to(dtype)
    labels = torch.randint(0, K, (m,), generator=gen)
    fg = torch.rand(m, generator=gen) > 0.7
    targets = torch.zeros(m, K, dtype=dtype)
    targets[fg, labels[fg]] = 1
    return logits, targets, torch.rand(m, generator=gen, dtype=torch.float64).to(dtype)


def make(name, record):
    if name == "focal":
        return SigmoidFocalLoss(K, alpha=0.25, gamma=2.0, class_groups=GROUPS, record_statistics=record)
    return QualityFocalLoss(K, beta=2.0, class_groups=GROUPS, record_statistics=record)


@pytest.mark.parametrize("name", ["focal", "qfl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_loss_and_gradient_are_bitwise_those_of_the_option_off(name, dtype):
    """Over 3 steps (the state moving): the same loss and logits' gradient bitwise; the
    state is the paper's sums of |dL_total/dz| (float32) of those gradients."""
    off, on = make(name, False), make(name, True)
    pos = torch.zeros(K, dtype=torch.float64)
    neg = torch.zeros(K, dtype=torch.float64)
    for step in range(3):
        logits, targets, quality = batch(step, dtype=dtype)
        kw = {"quality": quality} if name == "qfl" else {}
        grads, losses = [], []
        for loss in (off, on):
            z = logits.clone().requires_grad_(True)
            out = loss(z, targets, 5.0, **kw)
            (out * 3.0).backward()
            losses.append(out)
            grads.append(z.grad)
        assert torch.equal(losses[0], losses[1]) and torch.equal(grads[0], grads[1])
        p, n = per_class_statistics(grads[0].double(), targets)
        pos, neg = pos + p, neg + n
        assert on.pos_neg.min() < 1
    rtol = 1e-3 if dtype == torch.float16 else 1e-6  # half: the tap sees the float32 gradient
    torch.testing.assert_close(on.pos_grad, pos.float(), rtol=rtol, atol=0)
    torch.testing.assert_close(on.neg_grad, neg.float(), rtol=rtol, atol=0)
    assert on.pos_grad.dtype == torch.float32


@pytest.mark.parametrize("name", ["focal", "qfl"])
def test_off_has_no_state_on_has_the_efl_state(name):
    off, on = make(name, False), make(name, True)
    assert not list(off.state_dict()) and statistics_losses(off) == []
    assert list(on.state_dict()) == ["pos_grad", "neg_grad", "pos_neg"]
    assert statistics_losses(on) == [("", on)] and on.statistics_only and not off.update_statistics
    assert on.describe()["record_statistics"] is True and off.describe()["record_statistics"] is False
    assert "record_statistics=True" in repr(on) and "record_statistics=False" in repr(off)
    assert not EqualizedFocalLoss(K).statistics_only
    assert torch.equal(on.weight, torch.ones(K))
    assert torch.equal(on.factors(torch.float64)[0], torch.full((K,), 2.0, dtype=torch.float64))
    if name == "focal":
        assert on.gamma == off.gamma == 2.0  # focal loss's one float, as before
    with pytest.raises(ValueError, match="EqualizedQualityFocalLoss needs its statistics: "
                                         "record_statistics must be True"):
        EqualizedQualityFocalLoss(K, record_statistics=False)  # EFL has no such argument
    with pytest.raises(ValueError, match="record_statistics must be True or False; got record_statistics='on'"):
        SigmoidFocalLoss(K, record_statistics="on")


@pytest.mark.parametrize("name", ["focal", "qfl"])
def test_summaries_are_g_only(name):
    loss = make(name, True).train()
    logits, targets, quality = batch()
    kw = {"quality": quality} if name == "qfl" else {}
    with EventStorage() as storage:
        loss(logits.requires_grad_(True), targets, 1.0, **kw).sum().backward()
        loss(logits, targets, 1.0, **kw)
        latest = set(storage.latest())
    assert {"efl/pos_neg_all", "efl/pos_neg_r", "efl/pos_neg_c", "efl/pos_neg_f"} <= latest
    assert not any(k.startswith("efl/gamma") for k in latest)  # no focusing factor to show


# ----- a tiny detector trained with the option on and off: bitwise the same ------------
def images(seed, size=64):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in (3, 1):
        inst = Instances((size, size))
        xy = torch.rand(n, 2, generator=gen) * size / 2
        wh = 8 + torch.rand(n, 2, generator=gen) * size / 3
        inst.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1))
        inst.gt_classes = torch.randint(0, K, (n,), generator=gen)
        image = torch.randint(0, 255, (3, size, size), generator=gen).float()
        out.append({"image": image, "instances": inst, "height": size, "width": size})
    return out


def tiny_model_config(config):
    cfg = LazyConfig.load(os.path.join(ROOT, "configs/Synthetic", config))
    cfg.model.num_classes = K
    cfg.model.cls_loss.class_groups = GROUPS
    return cfg.model


def train(model_cfg, record, steps=3):
    """(model, storage's latest keys) after ``steps`` SGD steps (momentum) on fixed data."""
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.cls_loss.record_statistics = record
    torch.manual_seed(0)
    model = instantiate(model_cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with EventStorage() as storage:
        for step in range(steps):
            losses = model(images(step))
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            storage.step()
        keys = set(storage.latest())
    return model, keys


@pytest.mark.slow
@pytest.mark.parametrize("config", ["retinanet_focal_stats.py", "quality_qfl.py"])
def test_training_is_bitwise_equal_with_the_option_on_and_off(config):
    """configs/Synthetic/retinanet_focal_stats.py (EFLRetinaNet, SigmoidFocalLoss) and
    quality_qfl.py (QualityATSSRetinaNet, QualityFocalLoss), shrunk to K = 7: every weight
    and buffer after 3 SGD steps is bitwise the same; only the loss's state differs, and
    it moved."""
    model_cfg = tiny_model_config(config)
    off, _ = train(model_cfg, False)
    on, keys = train(model_cfg, True)
    state_off, state_on = off.state_dict(), on.state_dict()
    assert set(state_on) - set(state_off) == {"cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg"}
    for name, value in state_off.items():
        assert torch.equal(value, state_on[name]), name
    assert [n for n, _ in statistics_losses(on)] == ["cls_loss"] and statistics_losses(off) == []
    assert on.cls_loss.pos_grad.min() >= 0 and on.cls_loss.pos_grad.sum() > 0
    assert on.cls_loss.neg_grad.min() > 0 and on.cls_loss.pos_neg.min() < 1
    assert "efl/pos_neg_r" in keys


# ----- the EFL-activity note is about EFL: not for a focal loss with statistics ---------
class LossOnlyTrainer(TrainerBase):
    def __init__(self, loss):
        super().__init__()
        self.model = torch.nn.ModuleDict({"loss": loss}).train()

    def run_step(self):
        targets = torch.zeros(6, K)
        targets[0, 0] = 1
        self.model["loss"](torch.zeros(6, K), targets, 1.0)


def notes_after(loss, g=0.97, max_iter=10):
    loss.accumulate_statistics(torch.full((K,), g), torch.ones(K))  # every class: g = 0.97
    trainer = LossOnlyTrainer(loss)
    hook = EFLActivityCheck()
    trainer.register_hooks([hook])
    trainer.train(0, max_iter)
    return hook.note


def test_activity_note_is_for_efl_only():
    assert notes_after(EqualizedFocalLoss(K, class_groups=GROUPS)).startswith(
        "EFL is acting almost as focal loss")  # the same state under EFL: the note
    assert notes_after(SigmoidFocalLoss(K, class_groups=GROUPS, record_statistics=True)) is None
    both_off = EqualizedFocalLoss(K, class_groups=GROUPS, focusing=False, weighting=False)
    assert notes_after(both_off) is None  # focal loss by choice
    note = notes_after(EqualizedFocalLoss(K, class_groups=GROUPS, focusing=False))
    assert "focusing factor is 2.00 instead of focal loss's 2 and their weight 1.12" in note


# ----- YAML ------------------------------------------------------------------------------
def test_yaml_record_statistics_key():
    cfg = get_cfg()
    add_efl_config(cfg)
    cfg.DATASETS.TRAIN = ()
    cfg.MODEL.EFL.LOSS = "focal"
    assert cfg.MODEL.EFL.RECORD_STATISTICS is False
    off = cls_loss_from_config(cfg, K)
    assert type(off) is SigmoidFocalLoss and not off.record_statistics
    cfg.merge_from_list(["MODEL.EFL.RECORD_STATISTICS", "True"])
    focal, qfl = cls_loss_from_config(cfg, K), cls_loss_from_config(cfg, K, quality=True)
    assert type(focal) is SigmoidFocalLoss and focal.record_statistics
    assert type(qfl) is QualityFocalLoss and qfl.record_statistics
    cfg.MODEL.EFL.LOSS = "EFL"  # the key is the baselines': EFL records anyway
    assert type(cls_loss_from_config(cfg, K)) is EqualizedFocalLoss
    cfg.MODEL.EFL.LOSS = "focal"
    cfg.MODEL.EFL.RECORD_STATISTICS = 1
    with pytest.raises(ConfigError, match=r"^MODEL\.EFL\.RECORD_STATISTICS=1 is not valid: "
                                          r"record_statistics must be True or False"):
        cls_loss_from_config(cfg, K)
