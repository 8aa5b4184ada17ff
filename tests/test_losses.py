"""EqualizedFocalLoss against an independent float64 NumPy reference written from the
paper's formulas, plus focal-loss equivalence, gradcheck, precision, state and errors."""

import logging

import numpy as np
import pytest
import torch
from fvcore.nn import sigmoid_focal_loss

from efl import EqualizedFocalLoss


class NumpyEFL:
    """Float64 EFL from the formulas: loss, closed-form dL/dz and the cumulative state."""

    def __init__(self, num_classes, gamma_b=2.0, scale_factor=8.0, alpha=0.25):
        self.gamma_b, self.s, self.alpha = gamma_b, scale_factor, alpha
        self.pos = np.zeros(num_classes)
        self.neg = np.zeros(num_classes)
        self.g = np.ones(num_classes)  # initial state: focal loss

    def step(self, z, y, normalizer, upstream=1.0):
        z, y = z.astype(np.float64), y.astype(np.float64)
        gamma = self.gamma_b + self.s * (1 - self.g)
        w = gamma / self.gamma_b
        p, q = 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(z))  # p and 1 - p, both stable
        neg_log_p, neg_log_q = np.logaddexp(0, -z), np.logaddexp(0, z)
        a = self.alpha
        loss_pos = a * w * q**gamma * neg_log_p
        loss_neg = (1 - a) * w * p**gamma * neg_log_q
        loss = np.where(y == 1, loss_pos, loss_neg).sum() / normalizer
        grad_pos = -a * w * q**gamma * (gamma * p * neg_log_p + q)
        grad_neg = (1 - a) * w * p**gamma * (gamma * q * neg_log_q + p)
        grad = np.where(y == 1, grad_pos, grad_neg) * upstream / normalizer
        self.pos += (np.abs(grad) * y).sum(0)
        self.neg += (np.abs(grad) * (1 - y)).sum(0)
        self.g = np.clip(self.pos / (self.neg + 1e-10), 0, 1)
        return loss, grad


def random_batch(gen, num_anchors, num_classes, background=0.8, scale=2.0, dtype=torch.float32):
    """Logits (M, K) and one-hot targets with a `background` share of all-zero rows."""
    logits = (torch.randn(num_anchors, num_classes, generator=gen, dtype=torch.float64) * scale)
    labels = torch.randint(0, num_classes, (num_anchors,), generator=gen)
    is_fg = torch.rand(num_anchors, generator=gen) > background
    targets = torch.zeros(num_anchors, num_classes, dtype=dtype)
    targets[is_fg, labels[is_fg]] = 1
    # Skew classes: class 0 frequent, the last ones rare.
    logits -= 2.0
    return logits.to(dtype), targets


def rel_err(actual, expected):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


@pytest.mark.parametrize("upstream", [1.0, 3.5])
def test_matches_float64_reference_over_steps(upstream):
    """Loss, logits.grad and all three buffers follow the formulas for 6 steps; an upstream
    loss weight (as a loss weight or a gradient scaler would apply) reaches the stats."""
    K = 23
    gen = torch.Generator().manual_seed(0)
    efl = EqualizedFocalLoss(K)
    ref = NumpyEFL(K)
    worst = 0.0
    for step, (M, normalizer) in enumerate([(300, 17.0), (257, 1.0), (400, 33.0), (128, 5.5),
                                             (512, 64.0), (333, 9.0)]):
        logits, targets = random_batch(gen, M, K)
        # Leave the last class without positives to check gamma = gamma_b + s for it.
        targets[:, -1] = 0
        logits.requires_grad_(True)
        loss = efl(logits, targets, normalizer)
        (loss * upstream).backward()
        ref_loss, ref_grad = ref.step(logits.detach().numpy(), targets.numpy(), normalizer, upstream)
        errs = [
            rel_err(loss.item(), ref_loss),
            rel_err(logits.grad.numpy(), ref_grad),
            rel_err(efl.pos_grad.numpy(), ref.pos),
            rel_err(efl.neg_grad.numpy(), ref.neg),
            rel_err(efl.pos_neg.numpy(), ref.g),
        ]
        worst = max(worst, *errs)
        assert max(errs) < 1e-6, (step, errs)
    # The state moved away from focal loss and is exactly what the reference says.
    assert efl.pos_neg.min() < 0.5
    assert efl.pos_neg[-1].item() == 0.0
    assert efl.gamma[-1].item() == pytest.approx(10.0)
    assert efl.weight[-1].item() == pytest.approx(5.0)
    print(f"largest relative error against the float64 reference: {worst:.2e}")


def test_initial_state_is_focal_loss():
    K = 11
    logits, targets = random_batch(torch.Generator().manual_seed(1), 200, K)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    efl = EqualizedFocalLoss(K)
    assert torch.equal(efl.gamma, torch.full((K,), 2.0))
    assert torch.equal(efl.weight, torch.ones(K))
    loss = efl(a, targets, 7.0)
    focal = sigmoid_focal_loss(b, targets, alpha=0.25, gamma=2.0, reduction="sum") / 7.0
    loss.backward()
    focal.backward()
    torch.testing.assert_close(loss, focal, rtol=1e-6, atol=0)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-9)


def test_gradcheck_with_frozen_state():
    K = 5
    efl = EqualizedFocalLoss(K, scale_factor=4.0)
    efl.pos_grad.copy_(torch.tensor([0.1, 0.5, 1.0, 0.0, 2.0]))
    efl.neg_grad.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0]))
    efl.pos_neg.copy_((efl.pos_grad / efl.neg_grad).clamp(0, 1))
    efl.update_statistics = False
    state = {k: v.clone() for k, v in efl.state_dict().items()}
    logits, targets = random_batch(torch.Generator().manual_seed(2), 12, K, dtype=torch.float64,
                                   background=0.5)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: efl(z, targets, 3.0), (logits,))
    for k, v in efl.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_statistics_go_to_their_own_class_column():
    """Anchor-major (M, K): a positive of class 3 only adds to pos_grad[3]."""
    K = 6
    efl = EqualizedFocalLoss(K)
    logits = torch.zeros(4, K, requires_grad=True)
    targets = torch.zeros(4, K)
    targets[1, 3] = 1
    efl(logits, targets).backward()
    assert efl.pos_grad[3] > 0
    assert torch.count_nonzero(efl.pos_grad) == 1
    assert torch.all(efl.neg_grad > 0)


def test_forward_without_backward_changes_nothing():
    K = 4
    efl = EqualizedFocalLoss(K)
    logits, targets = random_batch(torch.Generator().manual_seed(3), 50, K)
    logits.requires_grad_(True)
    efl(logits, targets)
    with torch.no_grad():
        efl(logits, targets)
    assert torch.equal(efl.pos_neg, torch.ones(K))
    assert torch.equal(efl.pos_grad, torch.zeros(K))
    assert torch.equal(efl.neg_grad, torch.zeros(K))


def test_half_precision_and_autocast_compute_in_float32():
    K = 7
    logits, targets = random_batch(torch.Generator().manual_seed(4), 64, K)
    half = logits.half().requires_grad_(True)
    full = half.detach().float().requires_grad_(True)
    efl_half, efl_full = EqualizedFocalLoss(K), EqualizedFocalLoss(K)
    loss_half = efl_half(half, targets.half(), 3.0)
    loss_full = efl_full(full, targets, 3.0)
    assert loss_half.dtype == torch.float32
    torch.testing.assert_close(loss_half, loss_full)
    loss_half.backward()
    loss_full.backward()
    assert half.grad.dtype == torch.float16
    # The statistics are taken from the float32 gradient, before the cast back to half.
    torch.testing.assert_close(efl_half.pos_grad, efl_full.pos_grad)
    torch.testing.assert_close(efl_half.neg_grad, efl_full.neg_grad)

    efl_amp = EqualizedFocalLoss(K)
    layer = torch.nn.Linear(K, K)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(logits)
        assert z.dtype == torch.bfloat16
        loss = efl_amp(z, targets, 3.0)
    assert loss.dtype == torch.float32
    loss.backward()
    assert efl_amp.pos_grad.dtype == torch.float32 and torch.isfinite(efl_amp.pos_grad).all()


def test_nonfinite_gradient_is_not_accumulated(caplog):
    K = 5
    efl = EqualizedFocalLoss(K)
    logits, targets = random_batch(torch.Generator().manual_seed(5), 40, K, background=0.3)
    logits.requires_grad_(True)
    with caplog.at_level(logging.WARNING, logger="efl.losses"):
        for _ in range(2):  # e.g. a gradient scaler whose scale overflowed
            (efl(logits, targets) * float("inf")).backward()
    assert efl.num_nonfinite_steps == 2
    assert sum("non-finite" in r.message for r in caplog.records) == 1  # reported once
    assert torch.equal(efl.pos_grad, torch.zeros(K))
    assert torch.equal(efl.pos_neg, torch.ones(K))
    efl(logits, targets).backward()  # a finite step is accumulated again
    assert efl.pos_grad.sum() > 0 and torch.isfinite(efl.pos_neg).all()


def test_summaries_go_to_event_storage_per_group():
    from detectron2.utils.events import EventStorage

    groups = ["f", "f", "c", "r", "r"]
    efl = EqualizedFocalLoss(5, class_groups=groups)
    efl.pos_neg.copy_(torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0]))
    logits, targets = random_batch(torch.Generator().manual_seed(6), 30, 5)
    with EventStorage() as storage:
        efl(logits, targets)
        latest = {k: v for k, (v, _) in storage.latest().items()}
    assert set(latest) == {f"efl/{s}_{g}" for s in ("pos_neg", "gamma") for g in ("all", "r", "c", "f")}
    assert not any("loss" in k for k in latest)
    assert latest["efl/pos_neg_f"] == pytest.approx(0.9)
    assert latest["efl/pos_neg_r"] == pytest.approx(0.1)
    assert latest["efl/gamma_r"] == pytest.approx(2.0 + 8.0 * 0.9)
    assert latest["efl/gamma_c"] == pytest.approx(6.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gamma_b=0.0), "gamma_b.*0.0"),
        (dict(gamma_b=-1.0), "gamma_b.*-1.0"),
        (dict(scale_factor=-0.5), "scale_factor.*-0.5"),
        (dict(alpha=1.5), "alpha.*1.5"),
        (dict(alpha=-0.1), "alpha.*-0.1"),
        (dict(num_classes=0), "num_classes.*0"),
        (dict(class_groups=["r", "x", "f"]), "class_groups.*'x'"),
        (dict(class_groups=["r"]), "class_groups.*1 entries"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    args = dict(num_classes=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        EqualizedFocalLoss(**args)


@pytest.mark.parametrize(
    "logits, targets, match",
    [
        (torch.zeros(4, 3), torch.zeros(5, 3), r"same shape.*\(4, 3\).*\(5, 3\)"),
        (torch.zeros(4, 5), torch.zeros(4, 5), r"num_classes=3.*\(4, 5\)"),
        (torch.zeros(4, 3), torch.full((4, 3), 0.5), r"\{0, 1\}.*0.5"),
        (torch.zeros(4, 3), torch.full((4, 3), 2.0), r"\{0, 1\}.*2.0"),
        (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3), "floating-point"),
    ],
)
def test_bad_inputs(logits, targets, match):
    with pytest.raises(ValueError, match=match):
        EqualizedFocalLoss(3)(logits, targets)


def test_bad_normalizer():
    with pytest.raises(ValueError, match="normalizer.*0"):
        EqualizedFocalLoss(3)(torch.zeros(2, 3), torch.zeros(2, 3), normalizer=0)
