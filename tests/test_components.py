"""EFL's two components one at a time (issue 23.1): ``focusing`` (gamma_j = gamma_b +
s (1 - g_j), weight 1) and ``weighting`` (gamma_b, weight gamma_j / gamma_b) on EFL (fused
and readable paths) and EQFL, against float64 formulas over steps of a moving state;
both on is today's EFL bitwise; the LazyConfig and YAML keys and their bad values."""

import itertools
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

from efl import EqualizedFocalLoss, EqualizedQualityFocalLoss, add_efl_config
from efl.config import cls_loss_from_config
from efl.errors import ConfigError
from efl.losses import efl_factors, equalized_focal_loss
from efl.quality_loss import equalized_quality_focal_loss
from helpers import ROOT

K = 9
GAMMA_B, S, ALPHA = 2.0, 8.0, 0.25
COMPONENTS = list(itertools.product([True, False], repeat=2))  # (focusing, weighting)


def batch(seed, m=160):
    """float64 logits in [-6, 6] (the plain formulas below stay exact there), one-hot
    targets (the last class never positive), quality in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(m, K, generator=gen, dtype=torch.float64) * 2.5 - 1).clamp(-6, 6)
    labels = torch.randint(0, K - 1, (m,), generator=gen)
    fg = torch.rand(m, generator=gen) > 0.6
    targets = torch.zeros(m, K, dtype=torch.float64)
    targets[fg, labels[fg]] = 1
    quality = torch.rand(m, generator=gen, dtype=torch.float64)
    return logits, targets, quality


class Formula:
    """The paper's per-class factors from a float64 state, switched as the components say,
    and the state update from dL_total/dz."""

    def __init__(self, focusing, weighting):
        self.focusing, self.weighting = focusing, weighting
        self.pos, self.neg, self.g = np.zeros(K), np.zeros(K), np.ones(K)

    def factors(self):
        gamma_j = GAMMA_B + S * (1 - self.g)
        gamma = gamma_j if self.focusing else np.full(K, GAMMA_B)
        weight = gamma_j / GAMMA_B if self.weighting else np.ones(K)
        return torch.from_numpy(gamma), torch.from_numpy(weight)

    def efl(self, z, y):
        gamma, weight = self.factors()
        p = torch.sigmoid(z)
        p_t = torch.where(y == 1, p, 1 - p)
        alpha_t = torch.where(y == 1, ALPHA, 1 - ALPHA)
        return (alpha_t * weight * (1 - p_t) ** gamma * -torch.log(p_t)).sum()

    def eqfl(self, z, y, q):
        gamma, weight = self.factors()
        t = y * q[:, None]
        p = torch.sigmoid(z)
        bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
        return (weight * (t - p).abs() ** gamma * bce).sum()

    def update(self, grad, y):
        grad, y = grad.abs().numpy(), y.numpy()
        self.pos += (grad * y).sum(0)
        self.neg += (grad * (1 - y)).sum(0)
        self.g = np.clip(self.pos / (self.neg + 1e-10), 0, 1)


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def run_steps(loss, formula, dtype, quality_loss=False, steps=4):
    """Worst relative error of loss, gradient and state against ``formula`` over steps."""
    worst = 0.0
    for step in range(steps):
        logits, targets, quality = batch(step)
        normalizer = 3.0 + step
        z = logits.to(dtype, copy=True).requires_grad_(True)
        kw = {"quality": quality.to(dtype)} if quality_loss else {}
        out = loss(z, targets.to(dtype), normalizer, **kw)
        out.backward()
        z64 = logits.clone().requires_grad_(True)
        expected = (formula.eqfl(z64, targets, quality) if quality_loss
                    else formula.efl(z64, targets)) / normalizer
        expected.backward()
        formula.update(z64.grad, targets)
        worst = max(worst, rel(out.item(), expected.item()), rel(z.grad.double(), z64.grad),
                    rel(loss.pos_grad, formula.pos), rel(loss.neg_grad, formula.neg),
                    rel(loss.pos_neg, formula.g))
    assert loss.pos_neg.min() < 0.5  # the state moved, so the factors differ per class
    return worst


@pytest.mark.parametrize("focusing, weighting", COMPONENTS)
@pytest.mark.parametrize("implementation, dtype, tol", [
    ("reference", torch.float64, 1e-6), ("fused", torch.float64, 1e-6),
    ("fused", torch.float32, 2e-5),
])
def test_efl_components_match_the_formula(focusing, weighting, implementation, dtype, tol):
    """Both paths, loss / gradient / pos_grad / neg_grad / pos_neg over 4 steps. (The
    state is float32 buffers, hence 1e-6 even for float64 logits.)"""
    loss = EqualizedFocalLoss(K, GAMMA_B, S, ALPHA, implementation=implementation,
                              focusing=focusing, weighting=weighting)
    assert run_steps(loss, Formula(focusing, weighting), dtype) < tol


@pytest.mark.parametrize("focusing, weighting", COMPONENTS)
def test_eqfl_components_match_the_formula(focusing, weighting):
    loss = EqualizedQualityFocalLoss(K, GAMMA_B, S, focusing=focusing, weighting=weighting)
    assert run_steps(loss, Formula(focusing, weighting), torch.float64, quality_loss=True) < 1e-6


def state(loss, seed=3):
    g = torch.Generator().manual_seed(seed)
    loss.accumulate_statistics(torch.rand(K, generator=g), torch.rand(K, generator=g) * 4)
    return loss


@pytest.mark.parametrize("implementation", ["fused", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_components_is_the_unswitched_efl_bitwise(implementation, dtype):
    """focusing=weighting=True computes what EFL computed before the switches existed:
    gamma from the float32 state cast to the compute dtype, weight = gamma / gamma_b."""
    loss = state(EqualizedFocalLoss(K, implementation=implementation))
    logits, targets, _ = batch(5)
    gamma = (GAMMA_B + S * (1 - loss.pos_neg)).to(dtype)  # before backward moves the state
    assert torch.equal(loss.gamma, GAMMA_B + S * (1 - loss.pos_neg))
    z = logits.to(dtype, copy=True).requires_grad_(True)
    out = loss(z, targets.to(dtype), 7.0)
    out.backward()
    z2 = logits.to(dtype, copy=True).requires_grad_(True)
    if implementation == "fused":
        from efl.kernels import fused_equalized_focal_loss
        expected = fused_equalized_focal_loss(z2, targets.to(dtype), gamma, gamma / GAMMA_B, ALPHA) / 7.0
    else:
        expected = equalized_focal_loss(z2, targets.to(dtype), gamma, gamma / GAMMA_B, ALPHA).sum() / 7.0
    expected.backward()
    assert torch.equal(out, expected) and torch.equal(z.grad, z2.grad)
    eqfl = state(EqualizedQualityFocalLoss(K))
    q = torch.rand(logits.shape[0], dtype=dtype)
    z3 = logits.to(dtype)
    expected = equalized_quality_focal_loss(z3, targets.to(dtype) * q[:, None], gamma,
                                            gamma / GAMMA_B).sum() / 7.0
    assert torch.equal(eqfl(z3, targets.to(dtype), 7.0, quality=q), expected)


def test_both_off_is_focal_loss_with_the_state_recorded():
    loss = state(EqualizedFocalLoss(K, focusing=False, weighting=False))
    logits, targets, _ = batch(1)
    z = logits.clone().requires_grad_(True)
    loss(z, targets, 1.0).backward()
    torch.testing.assert_close(loss.gamma, torch.full((K,), GAMMA_B))
    torch.testing.assert_close(loss.weight, torch.ones(K))
    z2 = logits.clone().requires_grad_(True)
    p = torch.sigmoid(z2)  # fvcore's focal loss, in float64
    p_t = p * targets + (1 - p) * (1 - targets)
    ce = F.binary_cross_entropy_with_logits(z2, targets, reduction="none")
    alpha_t = ALPHA * targets + (1 - ALPHA) * (1 - targets)
    (alpha_t * ce * (1 - p_t) ** GAMMA_B).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad, rtol=1e-10, atol=1e-12)
    assert loss.pos_grad.sum() > 0 and loss.pos_neg.min() < 1


def test_factors_properties_record_and_repr():
    g = torch.tensor([1.0, 0.5, 0.0])
    gamma_j = GAMMA_B + S * (1 - g)
    for focusing, weighting in COMPONENTS:
        loss = EqualizedFocalLoss(3, focusing=focusing, weighting=weighting)
        loss.pos_neg.copy_(g)
        gamma, weight = efl_factors(g.numpy(), GAMMA_B, S, focusing, weighting)
        np.testing.assert_array_equal(loss.gamma.numpy(), gamma)
        np.testing.assert_array_equal(loss.weight.numpy(), weight)
        assert torch.equal(loss.gamma, gamma_j if focusing else torch.full((3,), GAMMA_B))
        assert torch.equal(loss.weight, gamma_j / GAMMA_B if weighting else torch.ones(3))
        assert loss.describe() == {"name": "EqualizedFocalLoss", "gamma_b": 2.0, "scale_factor": 8.0,
                                   "focusing": focusing, "weighting": weighting, "alpha": 0.25}
        assert ("focusing=False" in repr(loss)) != focusing
        assert ("weighting=False" in repr(loss)) != weighting
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match=f"focusing must be True or False; got focusing={bad!r}"):
            EqualizedFocalLoss(3, focusing=bad)
        with pytest.raises(ValueError, match="weighting must be True or False"):
            EqualizedQualityFocalLoss(3, weighting=bad)


def test_lazy_config_keys_and_bad_value():
    from efl.engine.config_checks import load_config

    path = os.path.join(ROOT, "configs/Synthetic/retinanet_efl.py")
    cfg = load_config(path, ["model.cls_loss.focusing=False", "model.cls_loss.weighting=true"])
    assert cfg.model.cls_loss.focusing is False and cfg.model.cls_loss.weighting is True
    with pytest.raises(ConfigError) as e:
        load_config(path, ["model.cls_loss.weighting=maybe"])
    message = str(e.value)
    assert "\n" not in message and message.startswith(
        "Config key model.cls_loss.weighting='maybe' is out of range: weighting must be True "
        "or False") and "model.cls_loss.weighting=True (the default)" in message


def test_yaml_keys_and_bad_value():
    cfg = get_cfg()
    add_efl_config(cfg)
    cfg.DATASETS.TRAIN = ()
    assert (cfg.MODEL.EFL.FOCUSING, cfg.MODEL.EFL.WEIGHTING) == (True, True)
    cfg.merge_from_list(["MODEL.EFL.FOCUSING", "False"])
    loss = cls_loss_from_config(cfg, K)
    assert type(loss) is EqualizedFocalLoss and (loss.focusing, loss.weighting) == (False, True)
    cfg.merge_from_list(["MODEL.EFL.FOCUSING", "True", "MODEL.EFL.WEIGHTING", "False"])
    loss = cls_loss_from_config(cfg, K, quality=True)
    assert type(loss) is EqualizedQualityFocalLoss and (loss.focusing, loss.weighting) == (True, False)
    cfg.MODEL.EFL.WEIGHTING = "off"
    with pytest.raises(ConfigError, match=r"^MODEL\.EFL\.WEIGHTING='off' is not valid: weighting "
                                          r"must be True or False; got weighting='off'\. Set it"):
        cls_loss_from_config(cfg, K)
