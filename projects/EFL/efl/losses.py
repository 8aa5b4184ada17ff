"""Equalized Focal Loss (Li et al., "Equalized Focal Loss for Dense Long-Tailed Object
Detection", CVPR 2022) with its per-class gradient statistics.

For logits z (M anchors x K classes) and one-hot targets y, with p = sigmoid(z):

    gamma_j = gamma_b + s * (1 - g_j)          (focusing factor of class j)
    w_j     = gamma_j / gamma_b                (weighting factor of class j)
    loss    = sum_ij alpha_t * w_j * (1 - p_t)^gamma_j * CE(p_t) / normalizer

g_j = clamp(pos_j / (neg_j + 1e-10), 0, 1), where pos_j / neg_j accumulate, over all
iterations and all workers, |dL_total/dz| of the entries of column j whose target is 1 / 0.

The two components can be switched off one at a time (the paper's ablation of them):
``focusing=False`` uses gamma_b for every class (weight still gamma_j / gamma_b),
``weighting=False`` uses weight 1 (gamma still gamma_j); both off is focal loss with the
statistics recorded. :func:`efl.loss_state.efl_factors` is the one definition.
"""

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .dense_loss import DenseClassificationLoss
from .groups import FREQUENCY_GROUPS
from .kernels import autocast_off, fused_equalized_focal_loss
from .loss_state import (GradientStatisticsLoss, attach_grad_scaler, efl_factors, efl_gamma,
                         efl_pos_neg, efl_weight, per_class_statistics, statistics_losses,
                         tap_logits)

__all__ = [
    "DenseClassificationLoss", "GradientStatisticsLoss", "statistics_losses", "EqualizedFocalLoss",
    "attach_grad_scaler", "equalized_focal_loss", "per_class_statistics", "tap_logits",
    "efl_pos_neg", "efl_gamma", "efl_weight", "efl_factors", "FREQUENCY_GROUPS",
]


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


class EqualizedFocalLoss(GradientStatisticsLoss):
    """Equalized Focal Loss with its gradient-driven per-class state
    (:class:`GradientStatisticsLoss`; the state starts at g = 1, i.e. focal loss).

    Args:
        num_classes, gamma_b, scale_factor, class_groups, focusing, weighting: see
            :class:`GradientStatisticsLoss` (focusing / weighting: EFL's two components,
            both on by default).
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
        focusing: bool = True,
        weighting: bool = True,
    ):
        super().__init__(num_classes, gamma_b, scale_factor, class_groups,
                         focusing=focusing, weighting=weighting)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1]; got alpha={alpha!r}")
        if implementation not in ("fused", "reference"):
            raise ValueError(
                "implementation must be 'fused' or 'reference'; "
                f"got implementation={implementation!r}"
            )
        self.alpha = float(alpha)
        self.implementation = implementation

    def hyperparameters(self) -> dict:
        return {**super().hyperparameters(), "alpha": self.alpha}

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        normalizer: Union[float, torch.Tensor] = 1.0,
        quality: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            logits: (M, K) float logits of the valid anchors (ignored anchors removed).
            targets: (M, K) one-hot targets in {0, 1}; background rows are all zero.
            normalizer: the loss is divided by it (e.g. the number of positive anchors).
            quality: not used (EFL has hard targets; the common signature).
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
            gamma, weight = self.factors(dtype)
            if fused:
                # The kernel computes the paper's sums in its own pass and hands them over
                # in backward (accumulate_statistics); another reader goes through the tap.
                in_kernel = self.update_statistics and self.statistics_reader is None
                if not in_kernel:
                    logits = tap_logits(logits, targets, self)
                loss = fused_equalized_focal_loss(
                    logits, targets, gamma, weight, self.alpha,
                    self if in_kernel else None, check_targets=True,
                )
            else:
                y = targets.to(dtype)
                z = tap_logits(logits.to(dtype), y, self)
                loss = equalized_focal_loss(z, y, gamma, weight, self.alpha).sum()
            return self._normalize_and_summarize(loss, normalizer)
