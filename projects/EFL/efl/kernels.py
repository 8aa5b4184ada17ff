"""The fast path of Equalized Focal Loss: loss, gradient and per-class gradient statistics
in one compute pass over the logits and targets.

Training step (the logits need a gradient), ``fused_equalized_focal_loss``:
- forward runs one compiled kernel that reads logits and targets once and writes the local
  gradient dl/dz (M, K) of the loss sum, in the compute dtype (float32; float64 for float64
  logits), while it adds up the loss (per-row partial sums) and, for non-bool targets,
  counts the target entries not in {0, 1}; a second loop of the same kernel reads dl/dz
  back in blocks of rows and sums |dl/dz| per class over positive and negative entries.
  The gradient and the two (K,) sums are kept until backward: one (M, K) tensor (float32
  for half logits, i.e. twice their size), which then becomes the logits' gradient.
- backward: the upstream gradient is a scalar g_out (loss weight, a gradient scaler's
  scale, 1 / normalizer), so dL/dz = g_out * dl/dz and the statistics of |dL/dz| are
  |g_out| times the kept sums. Backward scales the kept gradient in place (one read and
  write of (M, K); a new tensor in the logits' dtype for half logits), hands it to
  autograd and gives |g_out| * sums to the loss module (``accumulate_statistics``; a
  non-finite g_out gives non-finite sums, which it does not accumulate).
  A second backward through a retained graph recomputes both from the saved inputs.
Without a gradient (evaluation), one kernel computes the loss sum (and the target check).

The elementwise math is compiled with ``torch.compile(dynamic=True)`` (one compilation per
dtype, device and variant, whatever the number of anchors). Where compiling is not
possible, or fails, and for small inputs (< 2**16 entries), the same functions run
uncompiled over blocks of rows, which bounds the temporaries; the first failure is logged
once. Sums accumulate in float64 (float32 on MPS), the statistics are float32.

Math, with x = z for negatives and -z for positives (so p_t = sigmoid(-x)):
    CE = -log p_t = softplus(x),  (1 - p_t)^gamma = exp(-gamma * softplus(-x))
    loss  = alpha_t * w * (1 - p_t)^gamma * CE
    dl/dx = alpha_t * w * (1 - p_t)^gamma * (gamma * p_t * CE + (1 - p_t)),  dl/dz = sign * dl/dx
with softplus(+-x) = relu(+-x) + log1p(e), e = exp(-|x|), and both sigmoids from e.
(sigmoid(x).pow(gamma) instead of the exp/softplus form was off by 1.4e-6 at gamma ~ 10 in
float32, hence the stable forms.) Transcendentals per entry: compiled float32 code takes
two (exp(-|x|) and the modulator's exp): log1p(e) = 2 atanh(s), s = e / (2 + e) in (0, 1/3],
is a 7-term odd series (truncation < 2e-8 relative, below float32 rounding), and one
division gives both 1 / (1 + e) and s. Float64 and uncompiled code use torch.log1p (three
transcendentals), which keeps float64 exact and eager code short.
"""

import contextlib
import functools
import logging
from typing import Callable, Optional, Tuple

import torch

__all__ = [
    "fused_equalized_focal_loss",
    "efl_loss_sum",
    "efl_forward_with_grad",
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
# Compiled per-class sums read dl/dz back in blocks of this many rows (partial sums per
# block, then over blocks): a plain sum over dim 0 walks each column down all M rows.
_COLUMN_BLOCK_ROWS = 64  # 64 rows of K = 1203 float32: 300 KiB, within a core's L2


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


def _log1p_series(s):
    """log1p(e) = 2 * atanh(s) for s = e / (2 + e) in [0, 1/3]: odd series to s**13 / 13
    (the rest is < 2e-8 of the sum)."""
    s2 = s * s
    acc = 1 / 13
    for c in (1 / 11, 1 / 9, 1 / 7, 1 / 5, 1 / 3, 1.0):
        acc = acc * s2 + c
    return 2 * s * acc


class _Terms:
    """The pieces of EFL for (M, K) logits / targets, computed in float32 (float64)."""

    def __init__(self, logits, targets, gamma, weight, alpha: float, fresh: bool):
        dtype = torch.promote_types(logits.dtype, torch.float32)
        y = targets.to(dtype)
        self.sign = 1 - 2 * y  # dx/dz: +1 for negatives, -1 for positives
        x = logits.to(dtype) * self.sign
        self.gamma = gamma
        self.alpha_w = ((1 - alpha) + (2 * alpha - 1) * y) * weight  # alpha_t * w_j
        exp_abs = _shared(fresh, lambda: torch.exp(-x.abs()))  # e = exp(-|x|), in (0, 1]
        if fresh and dtype == torch.float32:  # compiled float32: no log1p (see the top)
            inv = lambda: 1 / ((1 + exp_abs()) * (2 + exp_abs()))
            recip = lambda: (2 + exp_abs()) * inv()  # 1 / (1 + e)
            log1p_exp = lambda: _log1p_series(exp_abs() * (1 + exp_abs()) * inv())
        else:
            log1p_exp = _shared(fresh, lambda: torch.log1p(exp_abs()))
            recip = _shared(fresh, lambda: 1 / (1 + exp_abs()))
        self.ce = lambda: torch.relu(x) + log1p_exp()  # softplus(x) = -log p_t
        self.modulator = lambda: torch.exp(-gamma * (torch.relu(-x) + log1p_exp()))
        nonneg = x >= 0
        self.p_t = lambda: torch.where(nonneg, exp_abs() * recip(), recip())  # sigmoid(-x)
        self.q_t = lambda: torch.where(nonneg, recip(), exp_abs() * recip())  # 1 - p_t

    def loss(self):
        return self.alpha_w * self.modulator() * self.ce()

    def dl_dx(self):
        return self.alpha_w * self.modulator() * (self.gamma * self.p_t() * self.ce() + self.q_t())


def _sum_dtype(logits: torch.Tensor) -> torch.dtype:
    """Sums accumulate in float64 (Inductor's CPU sums of float32 drift by ~1e-5 over 1e4
    rows; a float64 accumulator costs little); MPS has no float64."""
    return torch.float32 if logits.device.type == "mps" else torch.float64


def _bad_targets(targets, dim=None):
    """Number of target entries not in {0, 1} (NaN included), over `dim` (None: all)."""
    bad = (targets != 0) & (targets != 1)
    return bad.sum() if dim is None else bad.sum(dim, dtype=torch.int32)


def _loss_sum(logits, targets, gamma, weight, alpha: float, check=False, fresh=False):
    """0-dim sum of EFL over all (M, K) entries, in the compute dtype, and (check) the
    0-dim number of bad target entries (else None)."""
    loss = _Terms(logits, targets, gamma, weight, alpha, fresh).loss()
    if not fresh:
        total = loss.sum(dtype=_sum_dtype(logits)).to(loss.dtype)
        return total, (_bad_targets(targets) if check else None)
    # Compiled: sums per row first. Inductor fuses row sums into the elementwise loop;
    # with a sum over everything it stores some elementwise pieces as (M, K) buffers.
    total = loss.sum(1, dtype=_sum_dtype(logits)).sum().to(loss.dtype)
    return total, (_bad_targets(targets, 1).sum() if check else None)


def _column_sums(g, blocked: bool):
    """Per-class (K,) sums of |g| over its negative entries and over the others, in the
    accumulator dtype. `blocked`: partial sums over blocks of rows first (compiled)."""
    acc = _sum_dtype(g)

    def sums(block, dim):
        negative = block < 0
        below = torch.where(negative, -block, 0).sum(dim, dtype=acc)
        above = torch.where(negative, 0, block).sum(dim, dtype=acc)
        return below, above

    rows = _COLUMN_BLOCK_ROWS
    m = g.shape[0]
    blocks = m // rows
    if not blocked or blocks == 0:  # (Inductor rejects the empty blocked view)
        return sums(g, 0)
    below, above = sums(g[: blocks * rows].view(blocks, rows, g.shape[1]), 1)
    # The m % rows rows left: the last `rows` rows, those already in a block masked out
    # (a tail of varying length would make Dynamo compile again for an empty one).
    last = g[m - rows :]
    left = torch.arange(rows, device=g.device) >= rows - (m - blocks * rows)
    below_tail, above_tail = sums(torch.where(left[:, None], last, 0), 0)
    return below.sum(0) + below_tail, above.sum(0) + above_tail


def _forward_with_grad(logits, targets, gamma, weight, alpha: float, check=False, fresh=False):
    """One pass: (M,) row sums of the loss (accumulator dtype), dl/dz (M, K) in the compute
    dtype, per-class (K,) sums of |dl/dz| over positive and over negative entries
    (accumulator dtype), and (check) the (M,) int32 number of bad target entries per row.

    dl/dz <= 0 exactly where y = 1, so the sign of dl/dz tells positives from negatives (a
    NaN entry lands in the negatives' sum); the rows' sums and counts run in the loop that
    writes dl/dz, the per-class sums in a second loop over it."""
    t = _Terms(logits, targets, gamma, weight, alpha, fresh)
    loss_rows = t.loss().sum(1, dtype=_sum_dtype(logits))
    g = t.dl_dx() * t.sign
    positives, negatives = _column_sums(g, blocked=fresh)
    return loss_rows, g, positives, negatives, (_bad_targets(targets, 1) if check else None)


def _grad_and_sums(logits, targets, gamma, weight, alpha: float, scale, fresh: bool = False):
    """(M, K) gradient scale * dl/dz in the logits' dtype, and the per-class (K,) sums of
    |g| over its negative entries and over its non-negative ones (g in float32/64).

    For scale >= 0 those are the positives' and the negatives' sums (dl/dz <= 0 exactly
    where y = 1); a NaN entry lands in the second sum."""
    t = _Terms(logits, targets, gamma, weight, alpha, fresh)
    g = t.dl_dx() * (t.sign * scale)
    grad = g if g.dtype == logits.dtype else g.to(logits.dtype)
    below, above = _column_sums(g, blocked=fresh)
    return grad, below.to(g.dtype), above.to(g.dtype)


def _loss_sum_compilable(logits, targets, gamma, weight, alpha: float, check: bool):
    return _loss_sum(logits, targets, gamma, weight, alpha, check, fresh=True)


def _forward_with_grad_compilable(logits, targets, gamma, weight, alpha: float, check: bool):
    dtype = torch.promote_types(logits.dtype, torch.float32)
    loss_rows, g, positives, negatives, bad = _forward_with_grad(
        logits, targets, gamma, weight, alpha, check, fresh=True
    )
    bad = bad.sum() if check else None
    return loss_rows.sum().to(dtype), g, positives.to(dtype), negatives.to(dtype), bad


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


def _loss_sum_and_check(logits, targets, gamma, weight, alpha: float, check: bool):
    """efl_loss_sum and (check) the 0-dim number of bad target entries, else None."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    if logits.numel() == 0:
        return torch.zeros((), dtype=dtype, device=logits.device), None
    # Detached: the compiled code is guarded on requires_grad; no gradient is taken here.
    args = (logits.detach(), targets.detach(), gamma, weight, float(alpha), bool(check))
    out = _run_compiled("loss_sum", _loss_sum_compilable, logits.device, args)
    if out is not None:
        return out
    rows = _block_rows(logits.shape[1])
    total = torch.zeros((), dtype=_sum_dtype(logits), device=logits.device)
    bad = torch.zeros((), dtype=torch.int64, device=logits.device) if check else None
    for i in range(0, logits.shape[0], rows):
        block, block_bad = _loss_sum(
            logits[i : i + rows], targets[i : i + rows], gamma, weight, alpha, check
        )
        total += block
        if check:
            bad += block_bad
    return total.to(dtype), bad


def _raise_if_bad_targets(targets: torch.Tensor, bad: Optional[torch.Tensor]) -> None:
    if bad is not None and bool(bad):
        values = targets[(targets != 0) & (targets != 1)][:3].tolist()
        raise ValueError(f"targets must be one-hot in {{0, 1}}; got values such as {values}")


@torch.no_grad()
def efl_loss_sum(logits, targets, gamma, weight, alpha: float) -> torch.Tensor:
    """Sum of EFL over all entries, in float32 (float64 for float64 logits).

    Args:
        logits, targets: (M, K); targets in {0, 1}, any dtype (bool included).
        gamma, weight: (K,) in the compute dtype. alpha: float.
    """
    return _loss_sum_and_check(logits, targets, gamma, weight, alpha, check=False)[0]


@torch.no_grad()
def efl_forward_with_grad(
    logits, targets, gamma, weight, alpha: float, check_targets: bool = False
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss sum, its local gradient and that gradient's per-class statistics, in one
    pass over logits and targets.

    Args:
        as ``efl_loss_sum``; check_targets: raise ValueError if a target is not 0 or 1
            (counted in the same pass; bool targets need no check).
    Returns:
        loss: 0-dim sum of EFL, in the compute dtype (float32; float64 for float64 logits).
        grad: (M, K) d loss / d logits, in the compute dtype.
        positives, negatives: (K,) sums of |grad| over entries whose target is 1 / 0, in
        the compute dtype.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    num_classes = logits.shape[1]
    check = bool(check_targets) and targets.dtype != torch.bool
    if logits.numel() == 0:
        zeros = torch.zeros(num_classes, dtype=dtype, device=logits.device)
        grad = torch.zeros(logits.shape, dtype=dtype, device=logits.device)
        return zeros.sum(), grad, zeros, zeros.clone()
    args = (logits.detach(), targets.detach(), gamma, weight, float(alpha), check)
    out = _run_compiled("forward_with_grad", _forward_with_grad_compilable, logits.device, args)
    if out is not None:
        loss, grad, positives, negatives, bad = out
    else:
        acc = _sum_dtype(logits)
        grad = torch.empty(logits.shape, dtype=dtype, device=logits.device)
        loss = torch.zeros((), dtype=acc, device=logits.device)
        positives = torch.zeros(num_classes, dtype=acc, device=logits.device)
        negatives = torch.zeros_like(positives)
        bad = torch.zeros((), dtype=torch.int64, device=logits.device) if check else None
        rows = _block_rows(num_classes)
        for i in range(0, logits.shape[0], rows):
            loss_rows, block, pos, neg, block_bad = _forward_with_grad(
                logits[i : i + rows], targets[i : i + rows], gamma, weight, alpha, check
            )
            grad[i : i + rows] = block
            loss += loss_rows.sum()
            positives += pos
            negatives += neg
            if check:
                bad += block_bad.sum()
        loss, positives, negatives = loss.to(dtype), positives.to(dtype), negatives.to(dtype)
    _raise_if_bad_targets(targets, bad)
    return loss, grad, positives, negatives


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
    """Loss sum, local gradient and statistics in forward (one pass); backward scales the
    gradient and the statistics by the scalar upstream gradient."""

    @staticmethod
    def forward(ctx, logits, targets, gamma, weight, alpha, statistics, check_targets):
        with _autocast_off(logits.device.type):
            loss, grad, positives, negatives = efl_forward_with_grad(
                logits, targets, gamma, weight, alpha, check_targets
            )
        ctx.save_for_backward(logits, targets, gamma, weight)
        ctx.alpha = alpha
        ctx.statistics = statistics
        # Not saved for backward: backward scales it in place and hands it on, and only
        # a tensor nothing else refers to can become the logits' .grad without a copy.
        ctx.local = (grad, positives, negatives)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        logits, targets, gamma, weight = ctx.saved_tensors
        local, ctx.local = ctx.local, None
        if local is None:  # backward again through a retained graph: recompute
            with _autocast_off(logits.device.type):
                grad, positives, negatives = efl_grad_and_statistics(
                    logits, targets, gamma, weight, ctx.alpha, grad_output
                )
        else:
            grad, positives, negatives = local
            del local
            scale = grad_output.to(device=grad.device, dtype=grad.dtype).reshape(())
            if grad.dtype == logits.dtype:
                grad.mul_(scale)
            else:  # half logits: the float32 product, rounded once to their dtype
                grad = torch.mul(grad, scale, out=torch.empty_like(logits))
            magnitude = scale.abs()
            positives, negatives = positives * magnitude, negatives * magnitude
        if ctx.statistics is not None:
            ctx.statistics.accumulate_statistics(positives, negatives)
        return grad, None, None, None, None, None, None


def fused_equalized_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: torch.Tensor,
    weight: torch.Tensor,
    alpha: float,
    statistics: Optional[object] = None,
    check_targets: bool = False,
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
        check_targets: raise ValueError if a (non-bool) target is not 0 or 1; checked in
            the loss kernel's own pass over the targets.
    Returns:
        0-dim loss sum in the compute dtype.
    """
    check = bool(check_targets) and targets.dtype != torch.bool
    if torch.is_grad_enabled() and logits.requires_grad:
        return _FusedEFL.apply(logits, targets, gamma, weight, float(alpha), statistics, check)
    loss, bad = _loss_sum_and_check(logits, targets, gamma, weight, alpha, check)
    _raise_if_bad_targets(targets, bad)
    return loss
