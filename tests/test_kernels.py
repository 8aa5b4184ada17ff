"""The fused EFL path (efl.kernels) against the readable reference: loss, gradient and the
three state buffers over several steps, upstream weights, half inputs, non-finite steps,
gradcheck, and agreement of the compiled kernels with their eager fallback.

Compiling costs seconds per dtype, once per process (the compiled kernels are cached at
module level); the shapes here are small."""

import logging

import numpy as np
import pytest
import torch

from efl import EqualizedFocalLoss, kernels

K = 37


@pytest.fixture(params=["compiled", "eager"])
def backend(request):
    if request.param == "compiled" and not kernels._compile_supported():
        pytest.skip("torch.compile is not supported here")
    with kernels.use_backend(request.param):
        yield request.param


def batch(seed, num_anchors, num_classes=K, dtype=torch.float32, background=0.7):
    """Logits (M, K) spread over [-12, 8] and one-hot targets; the last class never
    positive (so gamma reaches gamma_b + s = 10 there)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_anchors, num_classes, generator=gen, dtype=torch.float64) * 3 - 2
    logits = logits.clamp(-12, 8)
    labels = torch.randint(0, num_classes - 1, (num_anchors,), generator=gen)
    fg = torch.rand(num_anchors, generator=gen) > background
    targets = torch.zeros(num_anchors, num_classes, dtype=dtype)
    targets[fg, labels[fg]] = 1
    return logits.to(dtype), targets


def rel_err(actual, expected):
    actual = actual.detach().double().cpu().numpy()
    expected = expected.detach().double().cpu().numpy()
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


def pair(**kwargs):
    fused = EqualizedFocalLoss(K, **kwargs)
    reference = EqualizedFocalLoss(K, implementation="reference", **kwargs)
    return fused, reference


@pytest.mark.parametrize("upstream", [1.0, 3.5, -2.0])
def test_fused_matches_float64_reference_over_steps(backend, upstream):
    """float32 fused path vs the reference run on float64 logits, 4 steps: loss, grad and
    pos_grad / neg_grad / pos_neg within 1e-6 (max-norm relative)."""
    fused, reference = pair()
    for step, (m, normalizer) in enumerate([(300, 9.0), (517, 1.0), (260, 23.5), (401, 4.0)]):
        logits, targets = batch(step, m)
        z = logits.clone().requires_grad_(True)
        z64 = logits.double().requires_grad_(True)
        loss = fused(z, targets, normalizer)
        loss64 = reference(z64, targets.double(), normalizer)
        (loss * upstream).backward()
        (loss64 * upstream).backward()
        assert loss.dtype == torch.float32 and z.grad.dtype == torch.float32
        errs = {
            "loss": rel_err(loss, loss64),
            "grad": rel_err(z.grad, z64.grad),
            **{n: rel_err(getattr(fused, n), getattr(reference, n))
               for n in ("pos_grad", "neg_grad", "pos_neg")},
        }
        assert max(errs.values()) < 1e-6, (step, errs)
    assert fused.pos_neg[-1].item() == 0.0 and fused.gamma[-1].item() == pytest.approx(10.0)
    assert fused.pos_neg.max() > 0.0  # the state moved


def test_half_inputs_give_half_gradient_and_float32_statistics(backend):
    fused, reference = pair()
    logits, targets = batch(10, 400)
    half = logits.half().requires_grad_(True)
    half_ref = half.detach().clone().requires_grad_(True)
    loss = fused(half, targets.half(), 7.0)
    loss_ref = reference(half_ref, targets.half(), 7.0)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=0)
    (loss * 1024.0).backward()  # as under a gradient scaler
    (loss_ref * 1024.0).backward()
    assert half.grad.dtype == torch.float16
    torch.testing.assert_close(half.grad, half_ref.grad, rtol=1e-3, atol=0)
    for name in ("pos_grad", "neg_grad", "pos_neg"):
        assert rel_err(getattr(fused, name), getattr(reference, name)) < 1e-6, name


def test_nonfinite_upstream_gradient_is_not_accumulated(backend, caplog):
    fused, reference = pair()
    logits, targets = batch(11, 300)
    z = logits.clone().requires_grad_(True)
    (fused(z, targets, 3.0)).backward()  # one finite step first
    state = {k: v.clone() for k, v in fused.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="efl.losses"):
        for scale in (float("inf"), float("nan")):
            (fused(z, targets, 3.0) * scale).backward()
    assert fused.num_nonfinite_steps == 2
    for k, v in fused.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not torch.isfinite(z.grad).all()


def test_frozen_state_and_forward_only(backend):
    fused, _ = pair()
    logits, targets = batch(12, 300)
    z = logits.clone().requires_grad_(True)
    fused(z, targets)  # forward without backward
    fused.update_statistics = False
    fused(z, targets).backward()
    assert torch.equal(fused.pos_neg, torch.ones(K))
    assert torch.equal(fused.pos_grad, torch.zeros(K))
    assert torch.equal(fused.neg_grad, torch.zeros(K))
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_gradcheck_through_fused_path(backend):
    efl = EqualizedFocalLoss(5, scale_factor=4.0)
    efl.pos_neg.copy_(torch.tensor([1.0, 0.5, 0.1, 0.0, 0.9]))
    efl.update_statistics = False
    logits, targets = batch(13, 12, num_classes=5, dtype=torch.float64, background=0.5)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: efl(z, targets, 3.0), (logits,))


def test_compiled_and_eager_kernels_agree(monkeypatch):
    """Both backends against the float64 evaluation, on more rows than Inductor's float32
    sums stay accurate for (hence the float64 accumulators)."""
    if not kernels._compile_supported():
        pytest.skip("torch.compile is not supported here")
    monkeypatch.setattr(kernels, "_EAGER_BLOCK_ELEMENTS", 1000 * K)  # several eager blocks
    logits, targets = batch(14, 6000)
    gamma = 2.0 + 8.0 * torch.rand(K, generator=torch.Generator().manual_seed(0))
    scale = torch.tensor(0.37)

    def run(backend, dtype):
        with kernels.use_backend(backend):
            z, g = logits.to(dtype), gamma.to(dtype)
            loss = kernels.efl_loss_sum(z, targets, g, g / 2.0, 0.25)
            grad, pos, neg = kernels.efl_grad_and_statistics(
                z, targets, g, g / 2.0, 0.25, scale.to(dtype)
            )
        return loss, grad, pos, neg

    expected = run("eager", torch.float64)
    for backend in ("compiled", "eager"):
        out = run(backend, torch.float32)
        errs = [rel_err(a, b) for a, b in zip(out, expected)]
        assert max(errs) < 1e-6, (backend, errs)
    # the per-class sums: positives are exactly the entries with target 1
    _, grad, pos, neg = expected
    torch.testing.assert_close(pos, (grad.abs() * targets).sum(0))
    torch.testing.assert_close(neg, (grad.abs() * (1 - targets)).sum(0))


def test_new_anchor_count_does_not_recompile():
    if not kernels._compile_supported():
        pytest.skip("torch.compile is not supported here")
    from torch._dynamo.utils import counters

    with kernels.use_backend("compiled"):
        gamma = torch.full((K,), 3.0)
        for m in (300, 517):  # compiled already (dynamic shapes) by the tests above or here
            logits, targets = batch(15, m)
            kernels.efl_loss_sum(logits, targets, gamma, gamma / 2, 0.25)
        before = sum(counters["stats"].values())
        for m in (333, 1234, 4096):
            logits, targets = batch(15, m)
            kernels.efl_loss_sum(logits, targets, gamma, gamma / 2, 0.25)
        assert sum(counters["stats"].values()) == before, dict(counters["stats"])


def test_failed_compile_falls_back_once(monkeypatch, caplog):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setattr(kernels, "_failed", {})
    monkeypatch.setattr(kernels, "_MIN_COMPILE_ELEMENTS", 0)
    monkeypatch.setattr(kernels, "_compile_supported", lambda: True)
    monkeypatch.setattr(torch, "compile", broken_compile)
    fused, reference = pair()
    logits, targets = batch(16, 200)
    with kernels.use_backend("auto"), caplog.at_level(logging.WARNING, logger="efl.kernels"):
        for _ in range(2):
            z = logits.clone().requires_grad_(True)
            z_ref = logits.clone().requires_grad_(True)
            fused(z, targets, 2.0).backward()
            reference(z_ref, targets, 2.0).backward()
            assert rel_err(z.grad, z_ref.grad) < 1e-6
    failed = [r.message for r in caplog.records if "torch.compile failed" in r.message]
    assert len(failed) == 1
    # The failure is named, and kept to that kernel, device and dtype.
    assert "_forward_with_grad on cpu torch.float32 (RuntimeError: no compiler here)" in failed[0]
    assert list(kernels._failed) == [("_forward_with_grad", "cpu", torch.float32)]
    assert rel_err(fused.pos_neg, reference.pos_neg) < 1e-6
    with kernels.use_backend("compiled"), pytest.raises(RuntimeError, match="no compiler here"):
        fused(logits.clone().requires_grad_(True), targets, 2.0)


def test_bool_targets_and_bad_arguments():
    fused, reference = pair()
    logits, targets = batch(17, 100)
    loss = fused(logits, targets.bool(), 2.0)
    torch.testing.assert_close(loss, reference(logits, targets, 2.0), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="implementation.*'cuda'"):
        EqualizedFocalLoss(3, implementation="cuda")
    with pytest.raises(ValueError, match="backend.*'fast'"):
        with kernels.use_backend("fast"):
            pass
    assert kernels.get_backend() == "auto"


def test_backend_is_scoped(monkeypatch):
    """use_backend holds inside its block only, and is restored when the block raises."""
    compiles = []
    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiles.append(fn) or fn)
    monkeypatch.setattr(kernels, "_compile_supported", lambda: True)
    logits, targets = batch(24, 100)
    gamma = torch.full((K,), 3.0)
    with kernels.use_backend("compiled"):
        with kernels.use_backend("eager"):
            kernels.efl_loss_sum(logits, targets, gamma, gamma / 2, 0.25)
        assert compiles == [] and kernels.get_backend() == "compiled"
        kernels.efl_loss_sum(logits, targets, gamma, gamma / 2, 0.25)
        assert compiles == [kernels._loss_sum]
        with pytest.raises(ZeroDivisionError), kernels.use_backend("eager"):
            1 / 0
        assert kernels.get_backend() == "compiled"
    assert kernels.get_backend() == "auto"


# ----------------------------------------------------------------------------------------
# The one-pass forward (efl_forward_with_grad): gradient kept from forward, statistics
# scaled in backward, targets checked in the kernel.


def forward_with_grad_float64(logits, targets, gamma):
    """The one-pass forward evaluated eagerly in float64 (weight gamma / 2, alpha 0.25)."""
    with kernels.use_backend("eager"):
        return kernels.efl_forward_with_grad(
            logits.double(), targets.double(), gamma.double(), gamma.double() / 2, 0.25
        )


def test_one_pass_forward_matches_two_pass_kernels(backend):
    """Loss, local gradient and per-class sums of the one-pass forward against efl_loss_sum
    and efl_grad_and_statistics (scale 1) and against their float64 evaluation."""
    logits, targets = batch(18, 700)
    gamma = 2.0 + 8.0 * torch.rand(K, generator=torch.Generator().manual_seed(1))
    one_pass = kernels.efl_forward_with_grad(logits, targets, gamma, gamma / 2, 0.25, True)
    assert one_pass[1].shape == logits.shape and one_pass[1].dtype == torch.float32
    loss = kernels.efl_loss_sum(logits, targets, gamma, gamma / 2, 0.25)
    two_pass = (loss,) + kernels.efl_grad_and_statistics(
        logits, targets, gamma, gamma / 2, 0.25, torch.tensor(1.0)
    )
    expected = forward_with_grad_float64(logits, targets, gamma)
    for name, a, b, c in zip(("loss", "grad", "positives", "negatives"), one_pass, two_pass, expected):
        assert rel_err(a, b) < 1e-6 and rel_err(a, c) < 1e-6, (name, rel_err(a, b), rel_err(a, c))
    grad64 = expected[1]
    torch.testing.assert_close(expected[2], (grad64.abs() * targets).sum(0))
    torch.testing.assert_close(expected[3], (grad64.abs() * (1 - targets)).sum(0))


def test_log1p_series_is_float32_accurate():
    e = torch.cat([torch.logspace(-30, 0, 2000, dtype=torch.float64), torch.rand(2000).double()])
    s = e / (2 + e)
    approx = kernels._log1p_series(s.float()).double()
    assert float(((approx - torch.log1p(e)).abs() / torch.log1p(e)).max()) < 3e-7


def test_extreme_logits_stay_accurate(backend):
    """|z| up to 80 (exp(-|x|) underflows float32 past ~88) and gamma up to 10: the compiled
    float32 series path against float64."""
    gen = torch.Generator().manual_seed(19)
    logits = (torch.rand(400, K, generator=gen) * 160 - 80).float()
    targets = (torch.rand(400, K, generator=gen) < 0.05).float()
    gamma = torch.linspace(2.0, 10.0, K)
    out = kernels.efl_forward_with_grad(logits, targets, gamma, gamma / 2, 0.25, True)
    expected = forward_with_grad_float64(logits, targets, gamma)
    errs = [rel_err(a, b) for a, b in zip(out, expected)]
    assert max(errs) < 1e-6, errs
    assert torch.isfinite(out[1]).all()


def test_gradient_is_handed_on_without_copy(backend, monkeypatch):
    """The gradient kept from forward becomes the logits' .grad itself (scaled in place):
    no second (M, K) buffer."""
    kept = []
    original = kernels.efl_forward_with_grad

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        kept.append(out[1].data_ptr())
        return out

    monkeypatch.setattr(kernels, "efl_forward_with_grad", spy)
    fused, reference = pair()
    logits, targets = batch(20, 300)
    z = logits.clone().requires_grad_(True)
    z_ref = logits.clone().requires_grad_(True)
    (fused(z, targets, 4.0) * 1.5).backward()
    (reference(z_ref, targets, 4.0) * 1.5).backward()
    assert kept == [z.grad.data_ptr()]
    assert rel_err(z.grad, z_ref.grad) < 1e-6
    assert rel_err(fused.pos_neg, reference.pos_neg) < 1e-6


def test_backward_twice_through_retained_graph(backend):
    """A second backward (retain_graph) recomputes the gradient and its statistics: same
    gradient and state as the reference path."""
    fused, reference = pair()
    logits, targets = batch(21, 300)
    z = logits.clone().requires_grad_(True)
    z_ref = logits.clone().requires_grad_(True)
    loss, loss_ref = fused(z, targets, 3.0), reference(z_ref, targets, 3.0)
    for scale in (1.0, -0.5):
        (loss * scale).backward(retain_graph=True)
        (loss_ref * scale).backward(retain_graph=True)
    assert rel_err(z.grad, z_ref.grad) < 1e-6
    for name in ("pos_grad", "neg_grad", "pos_neg"):
        assert rel_err(getattr(fused, name), getattr(reference, name)) < 1e-6, name


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("value", [0.5, 2.0, -1.0, float("nan")])
def test_target_values_are_checked_in_the_kernel(backend, grad, value):
    fused, reference = pair()
    logits, targets = batch(22, 300)
    targets[123, 4] = value
    z = logits.clone().requires_grad_(grad)
    for module in (fused, reference):
        with pytest.raises(ValueError, match=r"targets must be one-hot in \{0, 1\}; got values such as \[(nan|" + str(value) + r")\]"):
            module(z, targets, 2.0)
    assert torch.equal(fused.pos_grad, torch.zeros(K))  # nothing was accumulated


def test_bool_targets_skip_the_check(backend, monkeypatch):
    """Bool targets cannot be wrong: the kernel does not count (the check is off)."""
    fused, reference = pair()
    logits, targets = batch(23, 300)
    z = logits.clone().requires_grad_(True)
    z_ref = logits.clone().requires_grad_(True)
    reference(z_ref, targets, 2.0).backward()  # (float targets: checked, before the spy)
    calls = []
    original = kernels._bad_targets
    monkeypatch.setattr(kernels, "_bad_targets", lambda *a: calls.append(1) or original(*a))
    fused(z, targets.bool(), 2.0).backward()
    assert rel_err(z.grad, z_ref.grad) < 1e-6
    if backend == "eager":  # (compiled code does not call back into Python)
        assert calls == []
