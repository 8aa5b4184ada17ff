"""The two baselines of the dense detectors as :class:`efl.losses.DenseClassificationLoss`
modules, so a detector's ``cls_loss`` is the only thing its twins differ in:

- :class:`SigmoidFocalLoss`: Detectron2's RetinaNet focal loss (Lin et al., ICCV 2017),
  fvcore's ``sigmoid_focal_loss`` formula in the same operation order, summed and divided
  by the normaliser as ``RetinaNet.losses`` does;
- :class:`QualityFocalLoss`: QFL (Li et al., "Generalized Focal Loss", NeurIPS 2020),
  i.e. :class:`efl.quality_loss.EqualizedQualityFocalLoss` with ``scale_factor=0``.

With ``record_statistics=True`` each records EFL's per-class gradient statistics (the
state of :class:`efl.losses.GradientStatisticsLoss`: ``pos_grad``, ``neg_grad``,
``pos_neg`` = g, checkpointed, all-reduced, unscaled under a GradScaler, summarised as
``efl/pos_neg_<group>``) through the same gradient tap, without using them: the loss, its
gradient and so the training are bitwise those of the option off (the tap is the identity
in forward and hands the gradient on unchanged). That gives the g-vs-frequency picture its
focal-loss curve. Off (default): no state, no tap, no checkpoint keys.

Torch alone (no fvcore, no Detectron2).
"""

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .loss_state import GradientStatisticsLoss, tap_logits
from .quality_loss import equalized_quality_focal_loss

__all__ = ["SigmoidFocalLoss", "QualityFocalLoss", "sigmoid_focal_loss"]


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float,
                       gamma: float) -> torch.Tensor:
    """(M, K) elementwise focal loss in float32, as fvcore's ``sigmoid_focal_loss`` with
    ``reduction="none"`` (same operations in the same order; ``alpha < 0``: no alpha)."""
    inputs = logits.float()
    targets = targets.float()
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss


class SigmoidFocalLoss(GradientStatisticsLoss):
    """Focal loss, sum over all entries / normaliser; with ``record_statistics`` it records
    the per-class gradient statistics without using them (see :mod:`efl.focal_losses`).

    Args:
        num_classes: K, the logits' second dim.
        alpha: positive/negative balance in [0, 1]; negative: none (as fvcore).
        gamma: focusing factor (>= 0), one float (``self.gamma``).
        class_groups: as :class:`efl.losses.GradientStatisticsLoss` (the g summaries per
            frequency group; used with ``record_statistics`` only).
        record_statistics: record the state (default False: no state, as Detectron2's).
    """

    statistics_only = True

    def __init__(self, num_classes: int, alpha: float = 0.25, gamma: float = 2.0,
                 class_groups: Optional[Sequence[str]] = None, record_statistics: bool = False):
        if not alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1] (or negative: none); got alpha={alpha!r}")
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0; got gamma={gamma!r}")
        # The base's EFL factors are not used (gamma_b = 1, s = 0: constant; see factors).
        super().__init__(num_classes, gamma_b=1.0, scale_factor=0.0, class_groups=class_groups,
                         record_statistics=record_statistics)
        self.alpha = float(alpha)
        self.focal_gamma = float(gamma)

    @property
    def gamma(self) -> float:
        """Focal loss's focusing factor (one float for every class)."""
        return self.focal_gamma

    def factors(self, dtype: torch.dtype):
        """(gamma, weight), each (K,): focal loss's gamma and 1 for every class."""
        device = self.pos_neg.device if self.record_statistics else None
        ones = torch.ones(self.num_classes, dtype=dtype, device=device)
        return ones * self.focal_gamma, ones

    def hyperparameters(self) -> dict:
        return {"alpha": self.alpha, "gamma": self.gamma, "record_statistics": self.record_statistics}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                normalizer: Union[float, torch.Tensor] = 1.0,
                quality: Optional[torch.Tensor] = None) -> torch.Tensor:
        """As :meth:`efl.losses.EqualizedFocalLoss.forward` (``quality`` not used);
        float32 result."""
        self._check_inputs(logits, targets, normalizer, check_values=False)
        if self.record_statistics:
            self._start_forward()
            # .float() is what sigmoid_focal_loss does first (a no-op on float32 logits);
            # the tap behind it sees dL/dz in float32 and hands it on unchanged.
            logits = tap_logits(logits.float(), targets, self)
            self._put_summaries()
        return sigmoid_focal_loss(logits, targets, self.alpha, self.gamma).sum() / normalizer


class QualityFocalLoss(GradientStatisticsLoss):
    """QFL: ``sum_ij |t_ij - p_ij|^beta * BCE(z_ij, t_ij) / normalizer`` with the soft
    target t = one-hot x quality (no alpha); with ``record_statistics`` it records the
    per-class gradient statistics without using them (see :mod:`efl.focal_losses`).

    Args:
        num_classes: K.
        beta: focusing factor (> 0; the paper's 2).
        class_groups, record_statistics: as :class:`SigmoidFocalLoss`.
    """

    needs_quality = True
    statistics_only = True

    def __init__(self, num_classes: int, beta: float = 2.0,
                 class_groups: Optional[Sequence[str]] = None, record_statistics: bool = False):
        if not beta > 0:
            raise ValueError(f"beta must be > 0; got beta={beta!r}")
        # gamma_b = beta, s = 0: the base's factors are QFL's (gamma = beta, weight = 1).
        super().__init__(num_classes, gamma_b=beta, scale_factor=0.0, class_groups=class_groups,
                         record_statistics=record_statistics)
        self.beta = float(beta)

    def hyperparameters(self) -> dict:
        return {"beta": self.beta, "record_statistics": self.record_statistics}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                normalizer: Union[float, torch.Tensor] = 1.0,
                quality: Optional[torch.Tensor] = None) -> torch.Tensor:
        """As :meth:`efl.quality_loss.EqualizedQualityFocalLoss.forward` (``quality``
        required); float32 (float64 for float64 logits)."""
        self._check_inputs(logits, targets, normalizer)
        q = self._quality_or_raise(logits, targets, quality)
        z = logits.to(q.dtype)
        if self.record_statistics:  # the tap: identity in forward, gradient unchanged
            self._start_forward()
            z = tap_logits(z, targets, self)
            self._put_summaries()
        soft = targets.to(q.dtype) * q[:, None]
        beta = z.new_tensor(self.beta)
        if isinstance(normalizer, torch.Tensor):
            normalizer = normalizer.to(q.dtype)
        return equalized_quality_focal_loss(z, soft, beta, 1.0).sum() / normalizer
