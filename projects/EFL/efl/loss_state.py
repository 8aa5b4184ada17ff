"""The per-class gradient statistics of EFL and EQFL (:class:`GradientStatisticsLoss`):
the state, its one gradient tap, all-reduce, GradScaler unscaling, the non-finite skip and
the summaries; EFL's two components (:func:`efl_factors`); and :func:`statistics_losses`,
the one way to find such losses in a model. Focal loss and QFL use the same base when
they record statistics only (``record_statistics=True``: :mod:`efl.focal_losses`).
Torch alone (Detectron2's EventStorage is used when it is importable and open)."""

import logging
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .dense_loss import DenseClassificationLoss
from .groups import FREQUENCY_GROUPS, efl_summary_key, group_means

try:  # summaries go to Detectron2's EventStorage when one is open
    from detectron2.utils.events import get_event_storage
except ImportError:  # the loss itself does not need Detectron2
    get_event_storage = None

__all__ = [
    "GradientStatisticsLoss", "statistics_losses", "attach_grad_scaler", "per_class_statistics",
    "tap_logits", "efl_pos_neg", "efl_gamma", "efl_weight", "efl_factors",
]

logger = logging.getLogger("efl.losses")  # the loss's messages, wherever it is defined

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


def _full_like(x, value: float):
    return torch.full_like(x, value) if isinstance(x, torch.Tensor) else np.full_like(x, value)


def efl_factors(pos_neg, gamma_b: float, scale_factor: float, focusing: bool = True,
                weighting: bool = True):
    """(gamma, weight), each (K,): the focusing and weighting factors EFL applies with its
    two components switched on or off (torch tensors or numpy arrays alike).

    focusing: gamma = gamma_j = gamma_b + s (1 - g_j); off: gamma = gamma_b.
    weighting: weight = gamma_j / gamma_b; off: weight = 1.
    Both on is EFL; both off is focal loss with gamma_b (the state still recorded).
    """
    gamma_j = efl_gamma(pos_neg, gamma_b, scale_factor)
    gamma = gamma_j if focusing else _full_like(gamma_j, gamma_b)
    weight = gamma_j / gamma_b if weighting else _full_like(gamma_j, 1.0)
    return gamma, weight


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {name}={value!r}")
    return value


def per_class_statistics(grad: torch.Tensor, targets: torch.Tensor):
    """The paper's statistics of one backward: (K,) sums of |dL_total/dz| (``grad``, (M, K))
    over the entries whose target (``targets``, (M, K) in {0, 1}) is 1 and 0."""
    g = grad.detach().abs()
    y = targets.to(g.dtype)
    return (g * y).sum(dim=0), (g * (1 - y)).sum(dim=0)


class _GradientStatisticsTap(torch.autograd.Function):
    """Identity on the logits; its backward hands dL_total/dz to the loss module
    (:meth:`GradientStatisticsLoss.tap_statistics`), which turns it into per-class
    statistics. Only a backward pass updates the state. The one tap of the package."""

    @staticmethod
    def forward(ctx, logits, targets, loss):
        ctx.loss = loss
        ctx.save_for_backward(targets)
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad):
        (targets,) = ctx.saved_tensors
        ctx.loss.tap_statistics(grad, targets)
        return grad, None, None


def tap_logits(logits: torch.Tensor, targets: torch.Tensor, loss) -> torch.Tensor:
    """``logits`` behind the gradient tap of ``loss`` when its statistics are updated and
    a gradient will flow; else ``logits`` itself."""
    if loss.update_statistics and torch.is_grad_enabled() and logits.requires_grad:
        return _GradientStatisticsTap.apply(logits, targets, loss)
    return logits


class GradientStatisticsLoss(DenseClassificationLoss):
    """The state shared by EFL and EQFL: per-class cumulative gradient magnitudes and the
    focusing / weighting factors derived from them (focal loss and QFL record the same
    state with ``record_statistics=True``, without using it: ``statistics_only``).

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
        focusing, weighting: EFL's two components (:func:`efl_factors`): the per-class
            focusing factor gamma_j (off: gamma_b) and the weight gamma_j / gamma_b (off:
            1). Both on (default) is EFL; the state is recorded either way.
        record_statistics: False: no state at all (no buffers, no tap; not found by
            :func:`statistics_losses`); only for losses that do not need it
            (``statistics_only``: focal loss, QFL).

    Set ``update_statistics = False`` to freeze the state (e.g. for gradcheck). How one
    backward's gradient becomes statistics is :func:`per_class_statistics` (the paper's)
    unless :meth:`read_statistics_with` gives another reader (e.g. the EFL authors' A > 1
    reading, :mod:`efl.modeling.authors_statistics`).
    """

    def __init__(
        self,
        num_classes: int,
        gamma_b: float = 2.0,
        scale_factor: float = 8.0,
        class_groups: Optional[Sequence[str]] = None,
        focusing: bool = True,
        weighting: bool = True,
        record_statistics: bool = True,
    ):
        super().__init__()
        self.focusing = _check_bool("focusing", focusing)
        self.weighting = _check_bool("weighting", weighting)
        self.record_statistics = _check_bool("record_statistics", record_statistics)
        if not (record_statistics or self.statistics_only):
            raise ValueError(f"{type(self).__name__} needs its statistics: record_statistics "
                             "must be True")
        self._set_num_classes(num_classes)
        if not gamma_b > 0:
            raise ValueError(f"gamma_b must be > 0; got gamma_b={gamma_b!r}")
        if not scale_factor >= 0:
            raise ValueError(f"scale_factor must be >= 0; got scale_factor={scale_factor!r}")
        self.gamma_b = float(gamma_b)
        self.scale_factor = float(scale_factor)
        self.update_statistics = self.record_statistics
        self.num_nonfinite_steps = 0
        self.num_skipped_steps = 0  # steps a gradient scaler skipped (use_grad_scaler)
        self._grad_scaler = None
        self._commit_on_forward = True
        self._pending = []  # (positives, negatives, scale) awaiting the scaler's verdict
        self.statistics_reader = None  # None: per_class_statistics (read_statistics_with)

        if self.record_statistics:  # without: no state at all (statistics_only losses)
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
        self._class_groups = class_groups  # (K,) names for the summaries' group means, or None

    # g from the accumulated gradients (EFL: clamped to [0, 1]; EQLv2 overrides it)
    ratio = staticmethod(efl_pos_neg)

    # True: the loss records the state but does not use it (focal loss, QFL): no gamma
    # summaries, and the "EFL is acting as focal loss" note leaves it alone.
    statistics_only = False

    @property
    def gamma(self) -> torch.Tensor:
        """(K,) focusing factor of each class from the current state (gamma_b for all with
        ``focusing`` off)."""
        return self.factors(self.pos_neg.dtype)[0]

    @property
    def weight(self) -> torch.Tensor:
        """(K,) weighting factor of each class from the current state (1 with
        ``weighting`` off)."""
        return self.factors(self.pos_neg.dtype)[1]

    def factors(self, dtype: torch.dtype):
        """(gamma, weight), each (K,) in ``dtype``: what the loss applies now
        (:func:`efl_factors` of the state; gamma_j is computed in float32, then cast)."""
        gamma_j = efl_gamma(self.pos_neg, self.gamma_b, self.scale_factor).to(dtype)
        gamma = gamma_j if self.focusing else torch.full_like(gamma_j, self.gamma_b)
        weight = gamma_j / self.gamma_b if self.weighting else torch.ones_like(gamma_j)
        return gamma, weight

    def hyperparameters(self) -> dict:
        return {"gamma_b": self.gamma_b, "scale_factor": self.scale_factor,
                "focusing": self.focusing, "weighting": self.weighting}

    def read_statistics_with(self, reader) -> None:
        """``reader(grad, targets) -> (positives, negatives)``: how the gradient tap turns
        one backward's dL_total/dz ((M, K)) into (K,) statistics; None: the paper's
        :func:`per_class_statistics`."""
        self.statistics_reader = reader

    @torch.no_grad()
    def tap_statistics(self, grad: torch.Tensor, targets: torch.Tensor) -> None:
        """What the gradient tap calls in backward: read (M, K) ``grad`` against
        ``targets`` and hand the sums to :meth:`accumulate_statistics`."""
        reader = self.statistics_reader or per_class_statistics
        self.accumulate_statistics(*reader(grad, targets))

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

    def _normalize_and_summarize(self, loss_sum: torch.Tensor, normalizer) -> torch.Tensor:
        """loss_sum / normalizer (in loss_sum's dtype); puts the summaries."""
        if isinstance(normalizer, torch.Tensor):
            normalizer = normalizer.to(loss_sum.dtype)
        self._put_summaries()
        return loss_sum / normalizer

    def _put_summaries(self) -> None:
        """A few scalars per iteration (never one per class) when an EventStorage is open."""
        if get_event_storage is None or not self.training or not self.record_statistics:
            return
        try:
            storage = get_event_storage()
        except AssertionError:  # no EventStorage open: not inside a Detectron2 trainer
            return
        series = {"pos_neg": self.pos_neg}
        if not self.statistics_only:  # a loss that uses the state: its focusing factor too
            series["gamma"] = self.gamma
        values = torch.stack(list(series.values())).tolist()  # one device sync
        means = {efl_summary_key(stat, grp): mean for stat, v in zip(series, values)
                 for grp, mean in group_means(v, self._class_groups, all_classes=True).items()}
        storage.put_scalars(**means, smoothing_hint=False)


def statistics_losses(module: nn.Module) -> list:
    """[(name, loss)] of every :class:`GradientStatisticsLoss` that records statistics in
    ``module`` (itself included, name ""), in ``named_modules`` order: the one way the
    checkpointer, hooks, export loading, reports and GPU tools find a loss with state. A
    focal loss / QFL with ``record_statistics=True`` is one (``statistics_only``: its loss
    does not use the state); with False it has no state and is not."""
    return [(n, m) for n, m in module.named_modules()
            if isinstance(m, GradientStatisticsLoss) and m.record_statistics]


def attach_grad_scaler(model: nn.Module, scaler, commit_on_forward: bool = True) -> list:
    """``use_grad_scaler(scaler, commit_on_forward)`` on every loss with state of
    ``model``; returns them (call their ``commit_statistics()`` after ``scaler.update()``
    when a step must be in the state before the next forward, e.g. before a checkpoint)."""
    losses = [m for _, m in statistics_losses(model)]
    for loss in losses:
        loss.use_grad_scaler(scaler, commit_on_forward)
    return losses
