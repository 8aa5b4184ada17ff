"""The fast path of Equalized Focal Loss: loss, gradient and per-class gradient statistics
in two passes over the logits, with nothing (M, K) kept between forward and backward.

- forward reads logits and targets once and returns the loss sum; it saves references to
  its inputs (which exist anyway) and gamma / weight (K,).
- backward reads them again, writes dL/dz from the closed form (times grad_output, which
  carries the loss weight, a gradient scaler's scale and 1 / normalizer) and sums |dL/dz|
  per class over positive and negative entries; the loss module adds those sums to its
  state (``accumulate_statistics``).

The elementwise math is compiled with ``torch.compile(dynamic=True)`` (one compilation per
dtype and device, whatever the number of anchors). Where compiling is not possible, or
fails, and for small inputs (< 2**16 entries), the same functions run uncompiled over blocks
of rows, which bounds the temporaries; the first failure is logged once.

Math, with x = z for negatives and -z for positives (so p_t = sigmoid(-x)):
    CE = -log p_t = softplus(x),  (1 - p_t)^gamma = exp(-gamma * softplus(-x))
    loss  = alpha_t * w * (1 - p_t)^gamma * CE
    dl/dx = alpha_t * w * (1 - p_t)^gamma * (gamma * p_t * CE + (1 - p_t)),  dl/dz = sign * dl/dx
with softplus(+-x) = relu(+-x) + log1p(exp(-|x|)) and both sigmoids from exp(-|x|): three
transcendentals per entry, accurate in float32 for gamma up to 10 and any logit.
"""

import contextlib
import functools
import logging
from typing import Callable, Optional, Tuple

import torch

__all__ = [
    "fused_equalized_focal_loss",
    "efl_loss_sum",
    "efl_grad_and_statistics",
    "set_backend",
    "get_backend",
    "BACKENDS",
]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "compiled", "eager")  # auto: compiled where possible, else eager
_backend = "auto"
_compile_failed = set()  # device types on which torch.compile failed once ("auto" only)
_compiled = {}  # name -> torch.compile'd function (compiled lazily, once per process)
_EAGER_BLOCK_ELEMENTS = 1 << 21  # eager: rows per block * K, bounds each temporary
# "auto" runs smaller inputs eagerly: compiling costs seconds per dtype and device, more
# than such inputs ever take (unit tests, toy configs); "compiled" compiles every size.
_MIN_COMPILE_ELEMENTS = 1 << 16


def set_backend(name: str) -> str:
    """Choose how the elementwise math runs ("auto" | "compiled" | "eager"); returns the
    previous choice. "compiled" raises where torch.compile fails instead of falling back."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got backend={name!r}")
    previous, _backend = _backend, name
    return previous


def get_backend() -> str:
    return _backend


# ----------------------------------------------------------------------------------------
# Elementwise math. `fresh=True` (compiled) recomputes a shared subexpression at each use
# instead of reusing one tensor: Inductor's kernel-level CSE still computes it once per
# entry, while a reused exp/log result would be stored as a full (M, K) buffer on CPU.


def _shared(fresh: bool, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    if fresh:
        return fn
    value = fn()
    return lambda: value


class _Terms:
    """The pieces of EFL for (M, K) logits / targets, computed in float32 (float64)."""

    def __init__(self, logits, targets, gamma, weight, alpha: float, fresh: bool):
        dtype = torch.promote_types(logits.dtype, torch.float32)
        y = targets.to(dtype)
        self.sign = 1 - 2 * y  # dx/dz: +1 for negatives, -1 for positives
        x = logits.to(dtype) * self.sign
        self.gamma = gamma
        self.alpha_w = ((1 - alpha) + (2 * alpha - 1) * y) * weight  # alpha_t * w_j
        exp_abs = _shared(fresh, lambda: torch.exp(-x.abs()))  # exp(-|x|), in (0, 1]
        log1p_exp = _shared(fresh, lambda: torch.log1p(exp_abs()))
        recip = _shared(fresh, lambda: 1 / (1 + exp_abs()))
        self.ce = lambda: torch.relu(x) + log1p_exp()  # softplus(x) = -log p_t
        self.modulator = lambda: torch.exp(-gamma * (torch.relu(-x) + log1p_exp()))
        nonneg = x >= 0
        self.p_t = lambda: torch.where(nonneg, exp_abs() * recip(), recip())  # sigmoid(-x)
        self.q_t = lambda: torch.where(nonneg, recip(), exp_abs() * recip())  # 1 - p_t


def _sum_dtype(logits: torch.Tensor) -> torch.dtype:
    """Sums accumulate in float64 (Inductor's CPU sums of float32 drift by ~1e-5 over 1e4
    rows; a float64 accumulator costs little); MPS has no float64."""
    return torch.float32 if logits.device.type == "mps" else torch.float64


def _loss_sum(logits, targets, gamma, weight, alpha: float, fresh: bool = False):
    """0-dim sum of EFL over all (M, K) entries, in the compute dtype."""
    t = _Terms(logits, targets, gamma, weight, alpha, fresh)
    loss = t.alpha_w * t.modulator() * t.ce()
    return loss.sum(dtype=_sum_dtype(logits)).to(loss.dtype)


def _grad_and_sums(logits, targets, gamma, weight, alpha: float, scale, fresh: bool = False):
    """(M, K) gradient scale * dl/dz in the logits' dtype, and the per-class (K,) sums of
    |g| over its negative entries and over its non-negative ones (g in float32/64).

    For scale >= 0 those are the positives' and the negatives' sums (dl/dz <= 0 exactly
    where y = 1); a NaN entry lands in the second sum."""
    t = _Terms(logits, targets, gamma, weight, alpha, fresh)
    dl_dx = t.alpha_w * t.modulator() * (t.gamma * t.p_t() * t.ce() + t.q_t())
    g = dl_dx * (t.sign * scale)
    grad = g if g.dtype == logits.dtype else g.to(logits.dtype)
    negative = g < 0
    below = torch.where(negative, -g, 0).sum(0, dtype=_sum_dtype(logits)).to(g.dtype)
    above = torch.where(negative, 0, g).sum(0, dtype=_sum_dtype(logits)).to(g.dtype)
    return grad, below, above


def _loss_sum_compilable(logits, targets, gamma, weight, alpha: float):
    return _loss_sum(logits, targets, gamma, weight, alpha, fresh=True)


def _grad_and_sums_compilable(logits, targets, gamma, weight, alpha: float, scale):
    return _grad_and_sums(logits, targets, gamma, weight, alpha, scale, fresh=True)


# ----------------------------------------------------------------------------------------
# Dispatch: compiled where possible, else the same functions over blocks of rows.


@functools.lru_cache(maxsize=None)
def _compile_supported() -> bool:
    if not hasattr(torch, "compile"):
        return False
    try:
        from torch import _dynamo

        return bool(_dynamo.is_dynamo_supported())
    except Exception:  # pragma: no cover - very old or unusual builds
        return False


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(getattr(compiler, "is_compiling", lambda: False)())


def _autocast_off(device_type: str):
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _run_compiled(name: str, fn: Callable, device: torch.device, args: tuple):
    """fn compiled, or None where the "auto" backend cannot or could not compile it."""
    if _is_compiling():  # inside the caller's own torch.compile: let it trace fn
        return fn(*args)
    if _backend == "eager":
        return None
    if _backend == "auto" and (
        device.type in _compile_failed or args[0].numel() < _MIN_COMPILE_ELEMENTS
    ):
        return None
    if not _compile_supported():
        if _backend == "compiled":
            raise RuntimeError("torch.compile is not supported in this environment")
        _compile_failed.add(device.type)
        logger.warning("EFL kernels: torch.compile is not supported here; running eagerly.")
        return None
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=True)
    try:
        return _compiled[name](*args)
    except Exception as e:
        if _backend == "compiled":
            raise
        _compile_failed.add(device.type)
        logger.warning(
            "EFL kernels: torch.compile failed on %s (%s: %s); the loss runs uncompiled "
            "(slower, same results) from now on.", device.type, type(e).__name__, e,
        )
        return None


def _block_rows(num_classes: int) -> int:
    return max(1, _EAGER_BLOCK_ELEMENTS // max(1, num_classes))


@torch.no_grad()
def efl_loss_sum(logits, targets, gamma, weight, alpha: float) -> torch.Tensor:
    """Sum of EFL over all entries, in float32 (float64 for float64 logits).

    Args:
        logits, targets: (M, K); targets in {0, 1}, any dtype (bool included).
        gamma, weight: (K,) in the compute dtype. alpha: float.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    if logits.numel() == 0:
        return torch.zeros((), dtype=dtype, device=logits.device)
    # Detached: the compiled code is guarded on requires_grad; no gradient is taken here.
    args = (logits.detach(), targets.detach(), gamma, weight, float(alpha))
    out = _run_compiled("loss_sum", _loss_sum_compilable, logits.device, args)
    if out is not None:
        return out
    rows = _block_rows(logits.shape[1])
    total = torch.zeros((), dtype=_sum_dtype(logits), device=logits.device)
    for i in range(0, logits.shape[0], rows):
        total += _loss_sum(logits[i : i + rows], targets[i : i + rows], gamma, weight, alpha)
    return total.to(dtype)


@torch.no_grad()
def efl_grad_and_statistics(
    logits, targets, gamma, weight, alpha: float, scale: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of scale * efl_loss_sum(...) with respect to the logits and its per-class
    statistics.

    Args:
        as ``efl_loss_sum``; scale: 0-dim tensor in the compute dtype (the upstream gradient).
    Returns:
        grad: (M, K) in the logits' dtype.
        positives, negatives: (K,) sums of |grad| (taken in the compute dtype, before any
        cast to the logits' dtype) over entries whose target is 1 / 0.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    num_classes = logits.shape[1]
    scale = scale.to(device=logits.device, dtype=dtype).reshape(())
    if logits.numel() == 0:
        zeros = torch.zeros(num_classes, dtype=dtype, device=logits.device)
        return torch.zeros_like(logits), zeros, zeros.clone()
    args = (logits.detach(), targets.detach(), gamma, weight, float(alpha), scale)
    out = _run_compiled("grad_and_sums", _grad_and_sums_compilable, logits.device, args)
    if out is not None:
        grad, below, above = out
    else:
        grad = torch.empty_like(logits)
        below = torch.zeros(num_classes, dtype=_sum_dtype(logits), device=logits.device)
        above = torch.zeros_like(below)
        rows = _block_rows(num_classes)
        for i in range(0, logits.shape[0], rows):
            block, b, a = _grad_and_sums(
                logits[i : i + rows], targets[i : i + rows], gamma, weight, alpha, scale
            )
            grad[i : i + rows] = block
            below += b
            above += a
        below, above = below.to(dtype), above.to(dtype)
    # dl/dz < 0 exactly for positives, so for scale >= 0 the negative entries are theirs.
    flipped = scale < 0
    return grad, torch.where(flipped, above, below), torch.where(flipped, below, above)


# ----------------------------------------------------------------------------------------


class _FusedEFL(torch.autograd.Function):
    """Loss sum in forward; closed-form gradient and statistics in backward."""

    @staticmethod
    def forward(ctx, logits, targets, gamma, weight, alpha, statistics):
        ctx.save_for_backward(logits, targets, gamma, weight)
        ctx.alpha = alpha
        ctx.statistics = statistics
        return efl_loss_sum(logits, targets, gamma, weight, alpha)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        logits, targets, gamma, weight = ctx.saved_tensors
        with _autocast_off(logits.device.type):  # as in forward (run by the loss module)
            grad, positives, negatives = efl_grad_and_statistics(
                logits, targets, gamma, weight, ctx.alpha, grad_output
            )
        if ctx.statistics is not None:
            ctx.statistics.accumulate_statistics(positives, negatives)
        return grad, None, None, None, None, None


def fused_equalized_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: torch.Tensor,
    weight: torch.Tensor,
    alpha: float,
    statistics: Optional[object] = None,
) -> torch.Tensor:
    """Sum of EFL over all entries, differentiable in the logits (first order).

    Args:
        logits: (M, K) floating logits, any precision; their gradient comes back in it.
        targets: (M, K) in {0, 1}, any dtype.
        gamma, weight: (K,) focusing and weighting factors in the compute dtype (float32,
            or float64 for float64 logits); no gradient flows into them.
        alpha: balance of positives (alpha) against negatives (1 - alpha).
        statistics: an object with ``accumulate_statistics(positives, negatives)`` (each
            (K,)), called from backward with the per-class sums of |dL_total/dz|; None: off.
    Returns:
        0-dim loss sum in the compute dtype.
    """
    if torch.is_grad_enabled() and logits.requires_grad:
        return _FusedEFL.apply(logits, targets, gamma, weight, float(alpha), statistics)
    return efl_loss_sum(logits, targets, gamma, weight, alpha)
