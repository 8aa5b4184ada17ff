"""The one interface of the dense detectors' classification losses (focal, QFL, EFL, EQFL):
:class:`DenseClassificationLoss`, with the input checks they share. Torch alone."""

import torch
from torch import nn

from .kernels import raise_if_bad_targets

__all__ = ["DenseClassificationLoss"]


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

    def _set_num_classes(self, num_classes) -> None:
        """``self.num_classes = num_classes`` after checking it is a positive int."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int; got {num_classes!r}")
        self.num_classes = num_classes

    def hyperparameters(self) -> dict:
        """The loss's hyperparameters by name (what the run record keeps)."""
        return {}

    def extra_repr(self) -> str:
        values = {"num_classes": self.num_classes, **self.hyperparameters()}
        return ", ".join(f"{k}={v}" for k, v in values.items())

    def describe(self) -> dict:
        """``{"name": <class name>, **hyperparameters}``: the run record's ``cls_loss``."""
        return {"name": type(self).__name__, **self.hyperparameters()}

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

    def _quality_or_raise(self, logits, targets, quality) -> torch.Tensor:
        """(M,) quality of the positive rows in the compute dtype, 0 on background rows
        (whatever they held, NaN too), detached; a clear error when it is missing, of the
        wrong shape, or outside [0, 1] on a positive row."""
        if quality is None:
            raise ValueError(
                f"{type(self).__name__} needs quality=(M,) tensor, the soft target in [0, 1] "
                "of each row's positive entry (e.g. the IoU of its decoded box); got None"
            )
        if not isinstance(quality, torch.Tensor) or quality.shape != logits.shape[:1]:
            raise ValueError(
                f"quality must be a tensor of shape (M,) = ({logits.shape[0]},), one value "
                f"per row of logits; got {tuple(getattr(quality, 'shape', ()))}"
            )
        dtype = torch.promote_types(logits.dtype, torch.float32)
        q = quality.detach().to(dtype)
        positive = (targets != 0).any(dim=1)
        bad = positive & ~((q >= 0) & (q <= 1))
        if bool(bad.any()):
            raise ValueError(
                "quality must be in [0, 1] on positive rows; got values such as "
                f"{q[bad][:3].tolist()}"
            )
        return torch.where(positive, q, 0)
