"""Equalized Quality Focal Loss (EQFL), the EFL authors' second loss: Quality Focal Loss
(Li et al., "Generalized Focal Loss", NeurIPS 2020) with EFL's per-class factors.

For logits z (M anchors x K classes), one-hot positives y and the quality q (M,) of each
anchor's positive entry (e.g. the IoU of its decoded box with its ground truth), with
p = sigmoid(z) and the soft target t = y * q:

    loss = sum_ij w_j * |t_ij - p_ij|^gamma_j * BCE(z_ij, t_ij) / normalizer

with gamma_j = gamma_b + s * (1 - g_j) and w_j = gamma_j / gamma_b from the same gradient
statistics as EFL (:class:`efl.losses.GradientStatisticsLoss`): the positives of the
statistics are the entries with y = 1, whatever their quality. No alpha (as the authors'
``up/tasks/det/plugins/efl/models/losses/eqfl.py`` and QFL). ``scale_factor=0`` is QFL
with beta = gamma_b.
"""

from typing import Optional, Union

import torch
import torch.nn.functional as F

from .kernels import autocast_off
from .loss_state import GradientStatisticsLoss, tap_logits

__all__ = ["EqualizedQualityFocalLoss", "equalized_quality_focal_loss"]


def equalized_quality_focal_loss(
    logits: torch.Tensor, soft_targets: torch.Tensor, gamma: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Elementwise EQFL.

    Args:
        logits, soft_targets: (M, K) floating tensors, soft targets in [0, 1].
        gamma, weight: (K,) focusing and weighting factors (no gradient flows into them).
    Returns:
        (M, K) loss of every entry, unreduced.
    """
    modulator = (soft_targets - logits.sigmoid()).abs().pow(gamma)
    ce = F.binary_cross_entropy_with_logits(logits, soft_targets, reduction="none")
    return weight * modulator * ce


class EqualizedQualityFocalLoss(GradientStatisticsLoss):
    """EQFL with EFL's gradient-driven per-class state (see :mod:`efl.quality_loss`).

    Args:
        num_classes, gamma_b, scale_factor, class_groups, focusing, weighting: as
            :class:`efl.losses.EqualizedFocalLoss` (the state, its statistics, checkpoint
            keys, summaries, ``use_grad_scaler`` and the two components are the same:
            ``focusing=False``: |t - p|^gamma_b; ``weighting=False``: weight 1).

    The readable path under autograd only (no fused kernel: see docs/eqfl.md).
    """

    needs_quality = True

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        normalizer: Union[float, torch.Tensor] = 1.0,
        quality: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            logits, targets, normalizer: as :meth:`EqualizedFocalLoss.forward` (targets:
                the one-hot positives, which the statistics count whatever their quality).
            quality: (M,) soft target in [0, 1] of each row's positive entry (values on
                background rows are not used); required (ValueError when None).
        Returns:
            0-dim tensor in float32 (float64 for float64 logits).
        """
        self._start_forward()
        self._check_inputs(logits, targets, normalizer)
        q = self._quality_or_raise(logits, targets, quality)
        dtype = q.dtype
        with autocast_off(logits.device.type):
            y = targets.to(dtype)
            z = tap_logits(logits.to(dtype), y, self)
            gamma, weight = self.factors(dtype)
            loss = equalized_quality_focal_loss(z, y * q[:, None], gamma, weight)
            return self._normalize_and_summarize(loss.sum(), normalizer)
