"""The fast path of Equalized Focal Loss: loss, gradient and per-class gradient statistics
in one compute pass over the logits and targets.

Training step (the logits need a gradient), ``fused_equalized_focal_loss``:
- forward: one kernel reads logits and targets once and writes the local gradient dl/dz
  (M, K) of the loss sum in the compute dtype (float32; float64 for float64 logits), while
  it adds up the loss and, for non-bool targets, counts the targets not in {0, 1}; a second
  loop of it reads dl/dz back in blocks of rows and sums |dl/dz| per class over positive
  and negative entries. dl/dz and the two (K,) sums are kept until backward (float32 for
  half logits, i.e. twice their size).
- backward: the upstream gradient is a scalar g_out (loss weight, a gradient scaler's
  scale, 1 / normalizer), so dL/dz = g_out * dl/dz, scaled in place and handed to autograd
  as the logits' gradient, and the statistics of |dL/dz| are |g_out| times the kept sums,
  handed to the loss module by ``accumulate_statistics`` as its tap's are (non-finite: dropped). A
  second backward through a retained graph runs the forward kernel again.
Without a gradient (evaluation), a second kernel computes the loss sum and the target
check without writing a gradient.

Two ways to run each kernel, the same math: compiled with ``torch.compile(dynamic=True)``
(one compilation per dtype, device and kernel, whatever the number of anchors), or eagerly
over blocks of rows, which bounds the temporaries. ``use_backend`` chooses for a block of
code: "auto" (the default) compiles where it can and runs small inputs (< 2**16 entries)
and a kernel whose compilation failed on that device and dtype eagerly; "compiled" raises
instead; "eager" never compiles. Why the compiled path is not used is logged once. Sums
accumulate in float64 (float32 on MPS), the statistics are float32.

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
import contextvars
import functools
import logging
from typing import Callable, Dict, Optional, Tuple

import torch

__all__ = [
    "fused_equalized_focal_loss",
    "efl_loss_sum",
    "efl_forward_with_grad",
    "efl_grad_and_statistics",
    "use_backend",
    "get_backend",
    "BACKENDS",
    "autocast_off",
    "raise_if_bad_targets",
]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "compiled", "eager")
_backend = contextvars.ContextVar("efl_kernels_backend", default="auto")
_compiled: Dict[str, Callable] = {}  # kernel name -> its torch.compile wrapper
_failed: Dict[tuple, str] = {}  # (kernel name, device type, dtype) -> why compiling failed
_EAGER_BLOCK_ELEMENTS = 1 << 21  # eager: rows per block * K, bounds each temporary
# "auto" runs smaller inputs eagerly: compiling costs seconds per dtype and device, more
# than such inputs ever take (unit tests, toy configs); "compiled" compiles every size.
_MIN_COMPILE_ELEMENTS = 1 << 16
# Compiled per-class sums read dl/dz back in blocks of this many rows (partial sums per
# block, then over blocks): a plain sum over dim 0 walks each column down all M rows.
_COLUMN_BLOCK_ROWS = 64  # 64 rows of K = 1203 float32: 300 KiB, within a core's L2


@contextlib.contextmanager
def use_backend(name: str):
    """Run the kernels called inside the block (in this thread or task) with backend
    ``name``: "auto" | "compiled" (raise where torch.compile fails) | "eager"."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got backend={name!r}")
    token = _backend.set(name)
    try:
        yield
    finally:
        _backend.reset(token)


def get_backend() -> str:
    """The backend in effect here (see ``use_backend``)."""
    return _backend.get()


def autocast_off(device_type: str):
    """A context without autocast on ``device_type`` (where autocast exists)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _bad_targets(targets, dim=None):
    """Number of target entries not in {0, 1} (NaN included), over `dim` (None: all)."""
    bad = (targets != 0) & (targets != 1)
    return bad.sum() if dim is None else bad.sum(dim, dtype=torch.int32)


def raise_if_bad_targets(targets: torch.Tensor, num_bad: Optional[torch.Tensor] = None) -> None:
    """ValueError naming a few values if a target is not 0 or 1. ``num_bad``: the count a
    kernel already made (None: count here, one pass over the targets)."""
    if num_bad is None:
        num_bad = _bad_targets(targets)
    if bool(num_bad):
        values = targets[(targets != 0) & (targets != 1)][:3].tolist()
        raise ValueError(f"targets must be one-hot in {{0, 1}}; got values such as {values}")


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


# The two kernels. Each returns (M, K) tensors and sums (0-dim or (K,), in the accumulator
# dtype; the count of bad targets, None without `check`), as `_run` expects. Sums over the
# loss go per row first: Inductor fuses row sums into the elementwise loop, while with a
# sum over everything it stores some elementwise pieces as (M, K) buffers.


def _loss_sum(logits, targets, gamma, weight, alpha: float, check: bool, fresh: bool = False):
    """0-dim sum of EFL over all (M, K) entries and (check) the number of bad targets."""
    loss = _Terms(logits, targets, gamma, weight, alpha, fresh).loss()
    total = loss.sum(1, dtype=_sum_dtype(logits)).sum()
    return total, (_bad_targets(targets, 1).sum() if check else None)


def _forward_with_grad(logits, targets, gamma, weight, alpha: float, check: bool, fresh=False):
    """0-dim loss sum, dl/dz (M, K) in the compute dtype, per-class (K,) sums of |dl/dz|
    over positive and over negative entries, (check) the number of bad targets.

    dl/dz <= 0 exactly where y = 1, so the sign of dl/dz tells positives from negatives (a
    NaN entry lands in the negatives' sum); the loss and the count run in the loop that
    writes dl/dz, the per-class sums in a second loop over it."""
    t = _Terms(logits, targets, gamma, weight, alpha, fresh)
    total = t.loss().sum(1, dtype=_sum_dtype(logits)).sum()
    g = t.dl_dx() * t.sign
    positives, negatives = _column_sums(g, blocked=fresh)
    return total, g, positives, negatives, (_bad_targets(targets, 1).sum() if check else None)


# ----------------------------------------------------------------------------------------
# Dispatch: compiled where the backend allows, else the same kernel over blocks of rows.


@functools.lru_cache(maxsize=None)
def _compile_supported() -> bool:
    try:
        from torch import _dynamo

        return hasattr(torch, "compile") and bool(_dynamo.is_dynamo_supported())
    except Exception:  # pragma: no cover - very old or unusual builds
        return False


@functools.lru_cache(maxsize=None)
def _log_once(level: int, message: str) -> None:
    logger.log(level, message)


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(getattr(compiler, "is_compiling", lambda: False)())


def _compiled_kernel(kernel: Callable, logits: torch.Tensor) -> Optional[Callable]:
    """kernel compiled, or None where the backend in effect runs it eagerly."""
    backend = get_backend()
    if backend == "eager" or logits.numel() == 0:
        return None
    if backend == "auto":
        if logits.numel() < _MIN_COMPILE_ELEMENTS:
            _log_once(logging.INFO, (
                f"EFL kernels: inputs under {_MIN_COMPILE_ELEMENTS} logits run uncompiled "
                "(compiling would take longer than they do)."
            ))
            return None
        if (kernel.__name__, logits.device.type, logits.dtype) in _failed:
            return None  # logged when it failed
    if not _compile_supported():
        if backend == "compiled":
            raise RuntimeError("EFL kernels: torch.compile is not supported in this environment")
        _log_once(logging.WARNING, (
            "EFL kernels: torch.compile is not supported in this environment; the loss runs "
            "uncompiled (same results, slower)."
        ))
        return None
    if kernel.__name__ not in _compiled:
        _compiled[kernel.__name__] = torch.compile(kernel, dynamic=True)
    return _compiled[kernel.__name__]


def _over_row_blocks(kernel: Callable, logits, targets, *args) -> tuple:
    """kernel run eagerly over blocks of rows: its (M, K) outputs stitched together, its
    sums added up."""
    m = logits.shape[0]
    rows = max(1, _EAGER_BLOCK_ELEMENTS // max(1, logits.shape[1]))
    if m <= rows:
        return kernel(logits, targets, *args)
    total = None
    for i in range(0, m, rows):
        block = kernel(logits[i : i + rows], targets[i : i + rows], *args)
        if total is None:
            total = [
                None if out is None
                else out.new_empty((m,) + out.shape[1:]) if out.dim() == 2
                else torch.zeros_like(out)
                for out in block
            ]
        for acc, out in zip(total, block):
            if out is not None and out.dim() == 2:
                acc[i : i + rows] = out
            elif out is not None:
                acc += out
    return tuple(total)


def _run(kernel: Callable, logits, targets, *args) -> tuple:
    """kernel(logits, targets, *args) with the backend in effect (outputs: see the two
    kernels above)."""
    logits, targets = logits.detach(), targets.detach()  # compiled code guards on grad
    if _is_compiling():  # inside the caller's own torch.compile: let it trace the kernel
        return kernel(logits, targets, *args, True)
    compiled = _compiled_kernel(kernel, logits)
    if compiled is not None:
        try:
            return compiled(logits, targets, *args, True)
        except Exception as e:
            if get_backend() == "compiled":
                raise
            key = (kernel.__name__, logits.device.type, logits.dtype)
            _failed[key] = f"{type(e).__name__}: {e}"
            logger.warning(
                "EFL kernels: torch.compile failed for %s on %s %s (%s); that kernel runs "
                "uncompiled for such inputs from now on (same results, slower). Run under "
                "efl.kernels.use_backend('compiled') to have the error raised.",
                kernel.__name__, logits.device.type, logits.dtype, _failed[key],
            )
    return _over_row_blocks(kernel, logits, targets, *args)


# ----------------------------------------------------------------------------------------
# The kernels' public entry points and the autograd Function.


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, torch.float32)


@torch.no_grad()
def efl_loss_sum(logits, targets, gamma, weight, alpha: float, check_targets: bool = False):
    """Sum of EFL over all entries, in float32 (float64 for float64 logits).

    Args:
        logits, targets: (M, K); targets in {0, 1}, any dtype (bool included).
        gamma, weight: (K,) in the compute dtype. alpha: float.
        check_targets: raise ValueError if a (non-bool) target is not 0 or 1 (counted in
            the same pass).
    """
    check = bool(check_targets) and targets.dtype != torch.bool
    total, bad = _run(_loss_sum, logits, targets, gamma, weight, float(alpha), check)
    if check:
        raise_if_bad_targets(targets, bad)
    return total.to(_compute_dtype(logits))


@torch.no_grad()
def efl_forward_with_grad(
    logits, targets, gamma, weight, alpha: float, check_targets: bool = False
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss sum, its local gradient and that gradient's per-class statistics, in one
    pass over logits and targets.

    Args:
        as ``efl_loss_sum``.
    Returns:
        loss: 0-dim sum of EFL, in the compute dtype (float32; float64 for float64 logits).
        grad: (M, K) d loss / d logits, in the compute dtype.
        positives, negatives: (K,) sums of |grad| over entries whose target is 1 / 0, in
        the compute dtype.
    """
    check = bool(check_targets) and targets.dtype != torch.bool
    total, grad, positives, negatives, bad = _run(
        _forward_with_grad, logits, targets, gamma, weight, float(alpha), check
    )
    if check:
        raise_if_bad_targets(targets, bad)
    dtype = _compute_dtype(logits)
    return total.to(dtype), grad, positives.to(dtype), negatives.to(dtype)


def _scale_local(grad, positives, negatives, scale, logits):
    """The kept local gradient times the scalar upstream gradient, in the logits' dtype (in
    place where that is the compute dtype), and the statistics times |scale|."""
    scale = scale.to(device=grad.device, dtype=grad.dtype).reshape(())
    if grad.dtype == logits.dtype:
        grad.mul_(scale)
    else:  # half logits: the float32 product, rounded once to their dtype
        grad = torch.mul(grad, scale, out=torch.empty_like(logits))
    magnitude = scale.abs()
    return grad, positives * magnitude, negatives * magnitude


@torch.no_grad()
def efl_grad_and_statistics(
    logits, targets, gamma, weight, alpha: float, scale: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of scale * efl_loss_sum(...) with respect to the logits and its per-class
    statistics.

    Args:
        as ``efl_loss_sum``; scale: 0-dim tensor (the upstream gradient).
    Returns:
        grad: (M, K) in the logits' dtype.
        positives, negatives: (K,) sums of |grad| (in the compute dtype, before any cast
        to the logits' dtype) over entries whose target is 1 / 0.
    """
    _, grad, positives, negatives = efl_forward_with_grad(logits, targets, gamma, weight, alpha)
    return _scale_local(grad, positives, negatives, scale, logits)


class _FusedEFL(torch.autograd.Function):
    """Loss sum, local gradient and statistics in forward (one pass); backward scales the
    gradient and the statistics by the scalar upstream gradient."""

    @staticmethod
    def forward(ctx, logits, targets, gamma, weight, alpha, statistics, check_targets):
        with autocast_off(logits.device.type):
            loss, grad, positives, negatives = efl_forward_with_grad(
                logits, targets, gamma, weight, alpha, check_targets
            )
        ctx.save_for_backward(logits, targets, gamma, weight)
        ctx.alpha = alpha
        ctx.statistics = statistics
        ctx.backend = get_backend()  # backward may run in another thread
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
            with use_backend(ctx.backend), autocast_off(logits.device.type):
                local = efl_forward_with_grad(logits, targets, gamma, weight, ctx.alpha)[1:]
        grad, positives, negatives = _scale_local(*local, grad_output, logits)
        del local
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
    if torch.is_grad_enabled() and logits.requires_grad:
        check = bool(check_targets) and targets.dtype != torch.bool
        return _FusedEFL.apply(logits, targets, gamma, weight, float(alpha), statistics, check)
    return efl_loss_sum(logits, targets, gamma, weight, alpha, check_targets)
