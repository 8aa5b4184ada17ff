"""Equalized Focal Loss (Li et al., "Equalized Focal Loss for Dense Long-Tailed Object
Detection", CVPR 2022) with its per-class gradient statistics.

For logits z (M anchors x K classes) and one-hot targets y, with p = sigmoid(z):

    gamma_j = gamma_b + s * (1 - g_j)          (focusing factor of class j)
    w_j     = gamma_j / gamma_b                (weighting factor of class j)
    loss    = sum_ij alpha_t * w_j * (1 - p_t)^gamma_j * CE(p_t) / normalizer

g_j = clamp(pos_j / (neg_j + 1e-10), 0, 1), where pos_j / neg_j accumulate, over all
iterations and all workers, |dL_total/dz| of the entries of column j whose target is 1 / 0.
"""

import logging
from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .kernels import autocast_off, fused_equalized_focal_loss, raise_if_bad_targets
from .groups import ALL_CLASSES, FREQUENCY_GROUPS, efl_summary_key

try:  # summaries go to Detectron2's EventStorage when one is open
    from detectron2.utils.events import get_event_storage
except ImportError:  # pragma: no cover - the loss itself does not need Detectron2
    get_event_storage = None

__all__ = [
    "DenseClassificationLoss", "GradientStatisticsLoss", "statistics_losses", "EqualizedFocalLoss", "attach_grad_scaler", "equalized_focal_loss", "efl_pos_neg", "efl_gamma", "efl_weight",
    "FREQUENCY_GROUPS",
]

logger = logging.getLogger(__name__)

_EPS = 1e-10


# The formulas of the state, for torch tensors and numpy arrays alike (the report reuses them).
def efl_pos_neg(pos_grad, neg_grad):
    """g = clamp(pos / (neg + 1e-10), 0, 1) from the accumulated gradients, each (K,)."""
    return (pos_grad / (neg_grad + _EPS)).clip(0, 1)


def efl_gamma(pos_neg, gamma_b: float, scale_factor: float):
    """(K,) focusing factor gamma_j = gamma_b + s * (1 - g_j)."""
    return gamma_b + scale_factor * (1 - pos_neg)


def efl_weight(pos_neg, gamma_b: float, scale_factor: float):
    """(K,) weighting factor w_j = gamma_j / gamma_b."""
    return efl_gamma(pos_neg, gamma_b, scale_factor) / gamma_b


def equalized_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: torch.Tensor,
    weight: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """The readable reference: elementwise EFL.

    Args:
        logits, targets: (M, K) floating tensors, targets in {0, 1}.
        gamma, weight: (K,) focusing and weighting factors (no gradient flows into them).
        alpha: balance of positives (alpha) against negatives (1 - alpha).
    Returns:
        (M, K) loss of every entry, unreduced.
    """
    # With x = z for negatives and -z for positives: CE(p_t) = -log p_t = softplus(x) and
    # (1 - p_t)^gamma = sigmoid(x)^gamma = exp(-gamma * softplus(-x)). These forms keep
    # float32 accurate to ~1e-7 where sigmoid(x).pow(gamma), for gamma up to 10, is not.
    x = logits * (1 - 2 * targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    modulator = torch.exp(-gamma * F.softplus(-x))
    return alpha_t * weight * modulator * F.softplus(x)


class _GradientStatisticsTap(torch.autograd.Function):
    """Identity on the logits; its backward hands dL_total/dz to the loss module, which
    turns it into per-class statistics. Only a backward pass updates the state."""

    @staticmethod
    def forward(ctx, logits, targets, efl):
        ctx.efl = efl
        ctx.save_for_backward(targets)
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad):
        (targets,) = ctx.saved_tensors
        g = grad.detach().abs()
        positives = (g * targets).sum(dim=0)
        negatives = (g * (1 - targets)).sum(dim=0)
        ctx.efl.accumulate_statistics(positives, negatives)
        return grad, None, None


class DenseClassificationLoss(nn.Module):
    """The one interface of the dense detectors' classification losses (focal, QFL, EFL,
    EQFL, and the long-tail baselines): a detector holds one as ``cls_loss`` and calls

        loss = cls_loss(logits, targets, normalizer, quality=None)

    with ``logits`` (M, K) of the valid anchors, ``targets`` (M, K) one-hot in {0, 1}
    (bool or float; background rows all zero), ``normalizer`` a float or 0-dim tensor the
    summed loss is divided by, and ``quality`` (M,) in [0, 1], the soft target of each
    row's positive entry, for the losses whose class attribute ``needs_quality`` is True
    (ignored by the others). Returns a 0-dim tensor.

    ``num_classes`` is K. Losses with per-class state derive from
    :class:`GradientStatisticsLoss`; find them with :func:`statistics_losses`.
    """

    needs_quality = False
    num_classes: int


class GradientStatisticsLoss(DenseClassificationLoss):
    """The state shared by EFL and EQFL: per-class cumulative gradient magnitudes and the
    focusing / weighting factors derived from them.

    State (float32 buffers of shape (K,), saved in ``state_dict``): ``pos_grad`` and
    ``neg_grad``, the cumulative |dL/dz| of positive and negative entries (unscaled: see
    :meth:`use_grad_scaler`), and ``pos_neg`` (g), their clamped ratio; it starts at g = 1.

    Args:
        num_classes: K, the number of foreground classes (the logits' second dim).
        gamma_b: base focusing factor (> 0).
        scale_factor: s, how strongly imbalance raises a class's focusing factor (>= 0).
        class_groups: optional length-K sequence of 'r'/'c'/'f' (LVIS frequency groups);
            with it, the mean g and gamma of each group are put into Detectron2's
            EventStorage (when one is open) as ``efl/pos_neg_<group>`` and
            ``efl/gamma_<group>``.

    Set ``update_statistics = False`` to freeze the state (e.g. for gradcheck).
    """

    def __init__(
        self,
        num_classes: int,
        gamma_b: float = 2.0,
        scale_factor: float = 8.0,
        class_groups: Optional[Sequence[str]] = None,
    ):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int; got {num_classes!r}")
        if not gamma_b > 0:
            raise ValueError(f"gamma_b must be > 0; got gamma_b={gamma_b!r}")
        if not scale_factor >= 0:
            raise ValueError(f"scale_factor must be >= 0; got scale_factor={scale_factor!r}")
        self.num_classes = num_classes
        self.gamma_b = float(gamma_b)
        self.scale_factor = float(scale_factor)
        self.update_statistics = True
        self.num_nonfinite_steps = 0
        self.num_skipped_steps = 0  # steps a gradient scaler skipped (use_grad_scaler)
        self._grad_scaler = None
        self._commit_on_forward = True
        self._pending = []  # (positives, negatives, scale) awaiting the scaler's verdict

        self.register_buffer("pos_grad", torch.zeros(num_classes, dtype=torch.float32))
        self.register_buffer("neg_grad", torch.zeros(num_classes, dtype=torch.float32))
        self.register_buffer("pos_neg", torch.ones(num_classes, dtype=torch.float32))

        self.group_names = ()
        if class_groups is not None:
            class_groups = list(class_groups)
            if len(class_groups) != num_classes:
                raise ValueError(
                    f"class_groups must give one of {FREQUENCY_GROUPS} per class "
                    f"({num_classes} entries); got {len(class_groups)} entries"
                )
            unknown = sorted({str(g) for g in class_groups} - set(FREQUENCY_GROUPS))
            if unknown:
                raise ValueError(
                    f"class_groups entries must be one of {FREQUENCY_GROUPS}; got {unknown}"
                )
            self.group_names = tuple(g for g in FREQUENCY_GROUPS if g in class_groups)
            masks = torch.tensor(
                [[c == g for c in class_groups] for g in self.group_names], dtype=torch.float32
            )
            # (G, K) rows of 1/|group| over the group's classes: masks @ x = group means.
            self.register_buffer("_group_means", masks / masks.sum(1, keepdim=True), persistent=False)

    # g from the accumulated gradients (EFL: clamped to [0, 1]; EQLv2 overrides it)
    ratio = staticmethod(efl_pos_neg)

    @property
    def gamma(self) -> torch.Tensor:
        """(K,) focusing factor of each class from the current state."""
        return efl_gamma(self.pos_neg, self.gamma_b, self.scale_factor)

    @property
    def weight(self) -> torch.Tensor:
        """(K,) weighting factor of each class from the current state."""
        return efl_weight(self.pos_neg, self.gamma_b, self.scale_factor)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, gamma_b={self.gamma_b}, "
            f"scale_factor={self.scale_factor}"
        )

    def use_grad_scaler(self, scaler, commit_on_forward: bool = True) -> None:
        """Keep the state unscaled under a ``torch.amp.GradScaler`` (``scaler``; None: off).

        The logits' gradient in backward is scaled by the scaler's current scale; each
        backward's statistics are divided by that scale and held pending. They are added
        to the state by :meth:`commit_statistics` once ``scaler.update()`` has run, unless
        the scale went down, i.e. the scaler found an inf/NaN and skipped that step. With
        ``commit_on_forward`` (default) the next forward commits them first, so a plain
        ``scale(loss).backward(); step(); update()`` loop needs nothing else. With several
        backward passes per optimizer step (gradient accumulation) pass False and call
        :meth:`commit_statistics` after each ``scaler.update()``. Also call it before
        saving the state outside a forward. (An explicit ``scaler.update(new_scale)``
        lower than the step's scale also counts as a skipped step.)
        """
        self.commit_statistics()
        self._grad_scaler = scaler
        self._commit_on_forward = bool(commit_on_forward)

    @torch.no_grad()
    def commit_statistics(self) -> None:
        """Add the pending statistics of finished steps to the state (see
        :meth:`use_grad_scaler`); a no-op without a scaler or pending statistics."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        current = self._grad_scaler.get_scale() if self._grad_scaler is not None else 0.0
        for positives, negatives, scale in pending:
            if current < scale:  # the scaler backed off: it skipped this step
                self.num_skipped_steps += 1
            else:
                self._add_statistics(positives, negatives)

    @torch.no_grad()
    def accumulate_statistics(
        self, positives: torch.Tensor, negatives: torch.Tensor, scaled: bool = True
    ) -> None:
        """Add one backward's per-class gradient magnitudes (each (K,)) to the state.

        Sums them over all workers first, so every worker holds the same state. A step
        whose statistics are not finite (e.g. an overflowing AMP step) is not added. Under
        a gradient scaler (:meth:`use_grad_scaler`) they are held pending, and unscaled
        unless ``scaled`` is False (statistics computed in forward, e.g. EQLv2's).
        """
        if self._grad_scaler is None:
            self._add_statistics(positives, negatives)
            return
        scale = float(self._grad_scaler.get_scale())
        divisor = scale if scaled else 1.0
        self._pending.append((positives / divisor, negatives / divisor, scale))

    def _add_statistics(self, positives: torch.Tensor, negatives: torch.Tensor) -> None:
        stats = torch.stack([positives, negatives]).to(self.pos_grad.dtype)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        if not bool(torch.isfinite(stats).all()):
            self.num_nonfinite_steps += 1
            if self.num_nonfinite_steps == 1:
                logger.warning(
                    "%s: non-finite gradient reached the logits; this step is not added to "
                    "the gradient statistics (later ones are counted in num_nonfinite_steps "
                    "without another warning).", type(self).__name__,
                )
            return
        self.pos_grad += stats[0]
        self.neg_grad += stats[1]
        self.pos_neg.copy_(self.ratio(self.pos_grad, self.neg_grad))

    def _start_forward(self) -> None:
        """Commit pending statistics of the previous step (see use_grad_scaler)."""
        if self._pending and self._commit_on_forward:
            self.commit_statistics()

    def _check_inputs(self, logits, targets, normalizer, check_values: bool = True) -> None:
        """Types and shapes; with check_values also that non-bool targets are in {0, 1}
        (a pass over the targets: the fused path does it in its kernel instead)."""
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            raise ValueError(
                f"logits must be a floating-point tensor of shape (M, {self.num_classes}); "
                f"got {type(logits).__name__} {getattr(logits, 'dtype', '')}"
            )
        if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape:
            raise ValueError(
                "logits and targets must have the same shape (M, K); got logits "
                f"{tuple(logits.shape)} and targets {tuple(getattr(targets, 'shape', ()))}"
            )
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must have shape (M, num_classes={self.num_classes}); "
                f"got {tuple(logits.shape)}"
            )
        if check_values and targets.dtype != torch.bool:
            raise_if_bad_targets(targets)
        if not isinstance(normalizer, torch.Tensor) and not normalizer > 0:
            raise ValueError(f"normalizer must be > 0; got normalizer={normalizer!r}")

    def _normalize_and_summarize(self, loss_sum: torch.Tensor, normalizer) -> torch.Tensor:
        """loss_sum / normalizer (in loss_sum's dtype); puts the summaries."""
        if isinstance(normalizer, torch.Tensor):
            normalizer = normalizer.to(loss_sum.dtype)
        self._put_summaries()
        return loss_sum / normalizer

    def _put_summaries(self) -> None:
        """A few scalars per iteration (never one per class) when an EventStorage is open."""
        if get_event_storage is None or not self.training:
            return
        try:
            storage = get_event_storage()
        except AssertionError:  # no EventStorage open: not inside a Detectron2 trainer
            return
        g, gamma = self.pos_neg, self.gamma
        names = [efl_summary_key("pos_neg", ALL_CLASSES), efl_summary_key("gamma", ALL_CLASSES)]
        values = [g.mean(), gamma.mean()]
        if self.group_names:
            names += [efl_summary_key("pos_neg", n) for n in self.group_names]
            names += [efl_summary_key("gamma", n) for n in self.group_names]
            values += [self._group_means @ g, self._group_means @ gamma]
        values = torch.cat([v.reshape(-1) for v in values]).tolist()  # one device sync
        storage.put_scalars(**dict(zip(names, values)), smoothing_hint=False)


def statistics_losses(module: nn.Module) -> list:
    """[(name, loss)] of every :class:`GradientStatisticsLoss` in ``module`` (itself
    included, name ""), in ``named_modules`` order: the one way the checkpointer, hooks,
    export loading, reports and GPU tools find a loss with state."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, GradientStatisticsLoss)]


def attach_grad_scaler(model: nn.Module, scaler, commit_on_forward: bool = True) -> list:
    """``use_grad_scaler(scaler, commit_on_forward)`` on every EFL / EQFL module of
    ``model``; returns them (call their ``commit_statistics()`` after ``scaler.update()``
    when a step must be in the state before the next forward, e.g. before a checkpoint)."""
    losses = [m for _, m in statistics_losses(model)]
    for loss in losses:
        loss.use_grad_scaler(scaler, commit_on_forward)
    return losses


class EqualizedFocalLoss(GradientStatisticsLoss):
    """Equalized Focal Loss with its gradient-driven per-class state
    (:class:`GradientStatisticsLoss`; the state starts at g = 1, i.e. focal loss).

    Args:
        num_classes, gamma_b, scale_factor, class_groups: see
            :class:`GradientStatisticsLoss`.
        alpha: positive/negative balance in [0, 1].
        implementation: "fused" (default: ``efl.kernels``, one compute pass over logits
            and targets in forward, which keeps the gradient for backward) or "reference"
            (the readable ``equalized_focal_loss`` under autograd); both give the same
            loss, gradient and state.
    """

    def __init__(
        self,
        num_classes: int,
        gamma_b: float = 2.0,
        scale_factor: float = 8.0,
        alpha: float = 0.25,
        class_groups: Optional[Sequence[str]] = None,
        implementation: str = "fused",
    ):
        super().__init__(num_classes, gamma_b, scale_factor, class_groups)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1]; got alpha={alpha!r}")
        if implementation not in ("fused", "reference"):
            raise ValueError(
                "implementation must be 'fused' or 'reference'; "
                f"got implementation={implementation!r}"
            )
        self.alpha = float(alpha)
        self.implementation = implementation

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}"

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        normalizer: Union[float, torch.Tensor] = 1.0,
    ) -> torch.Tensor:
        """
        Args:
            logits: (M, K) float logits of the valid anchors (ignored anchors removed).
            targets: (M, K) one-hot targets in {0, 1}; background rows are all zero.
            normalizer: the loss is divided by it (e.g. the number of positive anchors).
        Returns:
            0-dim tensor: sum of EFL over all entries / normalizer, in float32 (float64
            for float64 logits) whatever the input precision or autocast state.
        """
        self._start_forward()
        fused = self.implementation == "fused"
        # The fused kernel checks the target values in its own pass over the targets.
        self._check_inputs(logits, targets, normalizer, check_values=not fused)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        with autocast_off(logits.device.type):
            gamma = self.gamma.to(dtype)
            if fused:
                # The statistics are handed over in backward, as the tap below does.
                statistics = self if self.update_statistics else None
                loss = fused_equalized_focal_loss(
                    logits, targets, gamma, gamma / self.gamma_b, self.alpha, statistics,
                    check_targets=True,
                )
            else:
                z = logits.to(dtype)
                y = targets.to(dtype)
                if self.update_statistics and torch.is_grad_enabled() and z.requires_grad:
                    z = _GradientStatisticsTap.apply(z, y, self)
                loss = equalized_focal_loss(z, y, gamma, gamma / self.gamma_b, self.alpha).sum()
            return self._normalize_and_summarize(loss, normalizer)

