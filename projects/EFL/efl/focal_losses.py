"""The two baselines of the dense detectors as :class:`efl.losses.DenseClassificationLoss`
modules, so a detector's ``cls_loss`` is the only thing its twins differ in:

- :class:`SigmoidFocalLoss`: Detectron2's RetinaNet focal loss (Lin et al., ICCV 2017),
  fvcore's ``sigmoid_focal_loss`` formula in the same operation order, summed and divided
  by the normaliser as ``RetinaNet.losses`` does;
- :class:`QualityFocalLoss`: QFL (Li et al., "Generalized Focal Loss", NeurIPS 2020),
  i.e. :class:`efl.quality_loss.EqualizedQualityFocalLoss` with ``scale_factor=0``.

Torch alone (no fvcore, no Detectron2).
"""

from typing import Optional, Union

import torch
import torch.nn.functional as F

from .dense_loss import DenseClassificationLoss
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


class SigmoidFocalLoss(DenseClassificationLoss):
    """Focal loss, sum over all entries / normaliser (no state).

    Args:
        num_classes: K, the logits' second dim.
        alpha: positive/negative balance in [0, 1]; negative: none (as fvcore).
        gamma: focusing factor (>= 0).
    """

    def __init__(self, num_classes: int, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self._set_num_classes(num_classes)
        if not alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1] (or negative: none); got alpha={alpha!r}")
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0; got gamma={gamma!r}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def hyperparameters(self) -> dict:
        return {"alpha": self.alpha, "gamma": self.gamma}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                normalizer: Union[float, torch.Tensor] = 1.0,
                quality: Optional[torch.Tensor] = None) -> torch.Tensor:
        """As :meth:`efl.losses.EqualizedFocalLoss.forward` (``quality`` not used);
        float32 result."""
        self._check_inputs(logits, targets, normalizer, check_values=False)
        return sigmoid_focal_loss(logits, targets, self.alpha, self.gamma).sum() / normalizer


class QualityFocalLoss(DenseClassificationLoss):
    """QFL: ``sum_ij |t_ij - p_ij|^beta * BCE(z_ij, t_ij) / normalizer`` with the soft
    target t = one-hot x quality (no state, no alpha).

    Args:
        num_classes: K.
        beta: focusing factor (> 0; the paper's 2).
    """

    needs_quality = True

    def __init__(self, num_classes: int, beta: float = 2.0):
        super().__init__()
        self._set_num_classes(num_classes)
        if not beta > 0:
            raise ValueError(f"beta must be > 0; got beta={beta!r}")
        self.beta = float(beta)

    def hyperparameters(self) -> dict:
        return {"beta": self.beta}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                normalizer: Union[float, torch.Tensor] = 1.0,
                quality: Optional[torch.Tensor] = None) -> torch.Tensor:
        """As :meth:`efl.quality_loss.EqualizedQualityFocalLoss.forward` (``quality``
        required); float32 (float64 for float64 logits)."""
        self._check_inputs(logits, targets, normalizer)
        q = self._quality_or_raise(logits, targets, quality)
        z = logits.to(q.dtype)
        soft = targets.to(q.dtype) * q[:, None]
        beta = z.new_tensor(self.beta)
        if isinstance(normalizer, torch.Tensor):
            normalizer = normalizer.to(q.dtype)
        return equalized_quality_focal_loss(z, soft, beta, 1.0).sum() / normalizer
