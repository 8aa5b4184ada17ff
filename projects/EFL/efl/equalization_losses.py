"""The long-tail baselines EFL descends from, for dense detectors: Equalization Loss
(EQL; Tan et al., CVPR 2020) and Equalization Loss v2 (EQLv2; Tan et al., CVPR 2021), as
their authors' ``mmdet/models/losses/{eql,eqlv2}.py`` (tztztztztz/eqlv2) compute them.

Their losses weight the sigmoid binary cross-entropy of a two-stage detector's RoI
classifier, which has a background column. A dense detector has none: a background anchor
is a row of all-zero targets. Each loss here weights either BCE (``base_loss="bce"``, as
theirs) or the sigmoid focal loss (``base_loss="focal"``, alpha 0.25, gamma 2, which a
one-stage detector needs against its ~10^5 easy negatives per image). docs/baselines.md.

For logits z (M, K) and one-hot targets y with p = sigmoid(z) and ``l_ij`` the base loss
of an entry:

- EQL:   loss = sum_ij (1 - E_i T_j (1 - y_ij)) l_ij / normalizer, where E_i = 1 on rows
  with a positive (anchors matched to an object) and T_j = 1 for classes whose image
  frequency is below lambda: rare classes' negatives are ignored on foreground anchors.
- EQLv2: loss = sum_ij w_ij l_ij / normalizer, w_ij = 1 + alpha (1 - f(g_j)) on
  positives and f(g_j) on negatives, f(x) = 1 / (1 + exp(-gamma (x - mu))), with
  g_j = pos_j / (neg_j + 1e-10) (not clamped; 100 before any statistics, i.e. f = 1).
  pos_j / neg_j accumulate w_ij |d l_ij / d z_ij| of the positive / negative entries of
  class j, computed in forward from the detached logits as theirs (no normaliser, no
  loss weight), before the state is updated with them.
"""

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .kernels import autocast_off
from .losses import DenseClassificationLoss, GradientStatisticsLoss

__all__ = [
    "BASE_LOSSES", "EqualizationLoss", "EqualizationLossV2", "base_loss_terms",
    "eqlv2_pos_neg", "eqlv2_negative_weight", "eqlv2_weight", "eql_weight",
]

BASE_LOSSES = ("focal", "bce")
EQL_LAMBDA_LVIS_V1 = 0.0011  # their configs/lvis/*eql*_lvis_v1.py (0.00177 for LVIS v0.5)


def base_loss_terms(logits, targets, base_loss: str, focal_alpha: float = 0.25,
                    focal_gamma: float = 2.0, with_grad: bool = False):
    """Elementwise base loss l (M, K) and, with ``with_grad``, |dl/dz| (M, K, detached).

    "bce": l = BCE(z, y), |dl/dz| = |p - y|. "focal": l = alpha_t (1 - p_t)^gamma CE(p_t)
    and |dl/dz| = alpha_t (1 - p_t)^gamma ((1 - p_t) - gamma p_t log p_t).
    """
    if base_loss == "bce":
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        if not with_grad:
            return loss, None
        with torch.no_grad():
            prob = logits.detach().sigmoid()
            return loss, (targets * (prob - 1) + (1 - targets) * prob).abs()
    # u = z on positives, -z on negatives: p_t = sigmoid(u), CE(p_t) = softplus(-u) and
    # (1 - p_t)^gamma = exp(-gamma softplus(u)), accurate in float32 (as efl.losses).
    u = logits * (2 * targets - 1)
    alpha_t = focal_alpha * targets + (1 - focal_alpha) * (1 - targets)
    ce = F.softplus(-u)
    modulator = torch.exp(-focal_gamma * F.softplus(u))
    loss = alpha_t * modulator * ce
    if not with_grad:
        return loss, None
    with torch.no_grad():
        u, ce, modulator = u.detach(), ce.detach(), modulator.detach()
        return loss, alpha_t * modulator * ((-u).sigmoid() + focal_gamma * u.sigmoid() * ce)


def eqlv2_pos_neg(pos_grad, neg_grad):
    """EQLv2's g = pos / (neg + 1e-10), not clamped (each (K,))."""
    return pos_grad / (neg_grad + 1e-10)


def eqlv2_negative_weight(pos_neg, gamma: float, mu: float):
    """(K,) f(g) = 1 / (1 + exp(-gamma (g - mu))): the weight of each class's negatives."""
    return 1 / (1 + torch.exp(-gamma * (pos_neg - mu)))


def eqlv2_weight(pos_neg, targets, gamma: float, mu: float, alpha: float):
    """(M, K) EQLv2 weights: f(g_j) on negatives, 1 + alpha (1 - f(g_j)) on positives."""
    neg_w = eqlv2_negative_weight(pos_neg, gamma, mu)
    pos_w = 1 + alpha * (1 - neg_w)
    return pos_w * targets + neg_w * (1 - targets)


def eql_weight(targets, rare):
    """(M, K) EQL weights: 0 on the negatives of ``rare`` classes ((K,) bool) in rows
    with a positive, 1 elsewhere."""
    foreground = (targets.amax(dim=1, keepdim=True) > 0).to(targets.dtype)
    return 1 - foreground * rare.to(targets.dtype) * (1 - targets)


def _check_base_loss(base_loss, focal_alpha, focal_gamma) -> None:
    if base_loss not in BASE_LOSSES:
        raise ValueError(f"base_loss must be one of {BASE_LOSSES}; got base_loss={base_loss!r}")
    if not 0 <= focal_alpha <= 1:
        raise ValueError(f"focal_alpha must be in [0, 1]; got focal_alpha={focal_alpha!r}")
    if not 0 <= focal_gamma < float("inf"):
        raise ValueError(f"focal_gamma must be >= 0; got focal_gamma={focal_gamma!r}")


class EqualizationLossV2(GradientStatisticsLoss):
    """EQLv2 for dense detectors, on the shared statistics base (the state ``pos_grad``,
    ``neg_grad``, ``pos_neg`` (g), all-reduced, checkpointed, non-finite steps skipped,
    summaries; under a GradScaler a step the scaler skips is not added).

    Args:
        num_classes: K (no background column).
        gamma, mu, alpha: theirs (12, 0.8, 4): f's steepness and centre, and how much
            the positives of a class whose negatives are down-weighted are up-weighted.
        base_loss: "focal" (default; see docs/baselines.md) or "bce" (theirs).
        focal_alpha, focal_gamma: of the focal base loss (unused by "bce").
        class_groups: as :class:`efl.losses.GradientStatisticsLoss` (summaries).

    The state is updated in forward (as theirs), when ``update_statistics`` and autograd
    are on; ``gamma`` is the base loss's focusing exponent (focal_gamma, or 0 for BCE),
    ``weight`` the negatives' weight f(g).
    """

    ratio = staticmethod(eqlv2_pos_neg)

    def __init__(
        self,
        num_classes: int,
        gamma: float = 12.0,
        mu: float = 0.8,
        alpha: float = 4.0,
        base_loss: str = "focal",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        class_groups: Optional[Sequence[str]] = None,
    ):
        _check_base_loss(base_loss, focal_alpha, focal_gamma)
        if not 0 <= gamma < float("inf"):
            raise ValueError(f"gamma must be >= 0 (theirs: 12); got gamma={gamma!r}")
        if not -float("inf") < mu < float("inf"):
            raise ValueError(f"mu must be a finite number (theirs: 0.8); got mu={mu!r}")
        if not 0 <= alpha < float("inf"):
            raise ValueError(f"alpha must be >= 0 (theirs: 4); got alpha={alpha!r}")
        # The base's EFL factors are not used: gamma_b = 1, s = 0 leave them constant.
        super().__init__(num_classes, gamma_b=1.0, scale_factor=0.0, class_groups=class_groups)
        self.map_gamma, self.mu, self.alpha = float(gamma), float(mu), float(alpha)
        self.base_loss = base_loss
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        # Theirs: a high initial ratio (100), so that both weights start at 1.
        self.pos_neg.fill_(100.0)

    @property
    def gamma(self) -> torch.Tensor:
        """(K,) focusing exponent of the base loss (the same for every class)."""
        return torch.full_like(self.pos_neg, self.focal_gamma if self.base_loss == "focal" else 0.0)

    @property
    def weight(self) -> torch.Tensor:
        """(K,) weight f(g) of each class's negatives."""
        return eqlv2_negative_weight(self.pos_neg, self.map_gamma, self.mu)

    def hyperparameters(self) -> dict:
        return {"gamma": self.map_gamma, "mu": self.mu, "alpha": self.alpha,
                "base_loss": self.base_loss, "focal_alpha": self.focal_alpha,
                "focal_gamma": self.focal_gamma}

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        normalizer: Union[float, torch.Tensor] = 1.0,
        quality: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """logits, targets (M, K), normalizer: as :class:`efl.losses.DenseClassificationLoss`
        (``quality`` is not used). Returns a 0-dim tensor in float32 (float64 for float64
        logits)."""
        self._start_forward()
        self._check_inputs(logits, targets, normalizer)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        collect = self.update_statistics and torch.is_grad_enabled()
        with autocast_off(logits.device.type):
            z, y = logits.to(dtype), targets.to(dtype)
            weight = eqlv2_weight(self.pos_neg.to(dtype), y, self.map_gamma, self.mu, self.alpha)
            loss, grad = base_loss_terms(z, y, self.base_loss, self.focal_alpha,
                                         self.focal_gamma, with_grad=collect)
            if collect:
                with torch.no_grad():
                    grad = grad * weight
                    self.accumulate_statistics((grad * y).sum(0), (grad * (1 - y)).sum(0),
                                               scaled=False)
            return self._normalize_and_summarize((loss * weight).sum(), normalizer)


class EqualizationLoss(DenseClassificationLoss):
    """EQL for dense detectors (no state).

    Args:
        num_classes: K.
        image_frequency: (K,) fraction of the training images that contain each class
            (:func:`efl.data.image_frequency.class_image_frequency`).
        lambda_: the frequency below which a class's negatives are ignored on anchors
            matched to an object; theirs for LVIS v1: 0.0011 (0.00177 for v0.5). In [0, 1].
        base_loss, focal_alpha, focal_gamma: as :class:`EqualizationLossV2`.
    """

    def __init__(
        self,
        num_classes: int,
        image_frequency: Sequence[float],
        lambda_: float = EQL_LAMBDA_LVIS_V1,
        base_loss: str = "focal",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        self._set_num_classes(num_classes)
        _check_base_loss(base_loss, focal_alpha, focal_gamma)
        if not 0 <= lambda_ <= 1:
            raise ValueError(
                f"lambda_ must be in [0, 1] (an image frequency; theirs for LVIS v1: "
                f"{EQL_LAMBDA_LVIS_V1}); got lambda_={lambda_!r}")
        if image_frequency is None or len(image_frequency) != num_classes:
            raise ValueError(
                f"image_frequency must give one value per class ({num_classes}); got "
                f"{None if image_frequency is None else len(image_frequency)} values")
        frequency = torch.as_tensor(list(image_frequency), dtype=torch.float32)
        if not bool(((frequency >= 0) & (frequency <= 1)).all()):
            raise ValueError("image_frequency values must be in [0, 1] (fractions of images)")
        self.lambda_ = float(lambda_)
        self.base_loss = base_loss
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        # Not saved in checkpoints: derived from the dataset and lambda, like the config.
        self.register_buffer("image_frequency", frequency, persistent=False)
        self.register_buffer("rare", frequency < self.lambda_, persistent=False)

    def hyperparameters(self) -> dict:
        return {"lambda_": self.lambda_, "rare_classes": int(self.rare.sum()),
                "base_loss": self.base_loss, "focal_alpha": self.focal_alpha,
                "focal_gamma": self.focal_gamma}

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        normalizer: Union[float, torch.Tensor] = 1.0,
        quality: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """As :meth:`EqualizationLossV2.forward`."""
        self._check_inputs(logits, targets, normalizer)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        with autocast_off(logits.device.type):
            z, y = logits.to(dtype), targets.to(dtype)
            loss, _ = base_loss_terms(z, y, self.base_loss, self.focal_alpha, self.focal_gamma)
            loss = (loss * eql_weight(y, self.rare)).sum()
            if isinstance(normalizer, torch.Tensor):
                normalizer = normalizer.to(dtype)
            return loss / normalizer
