"""Optimisation pieces of the EFL authors' recipe that Detectron2's LazyConfig has no key
for: clipping the total gradient norm, and LR schedules given in epochs.

Config keys (``train``): ``clip_grad = dict(enabled, max_norm, norm_type)``, and
``epochs``: when set, the run plan (:func:`efl.engine.plan_run`) resolves it at start-up,
from the training loader's epochs (the repeat-factor-expanded set cut into global batches),
to the run's ``max_iter`` and the iteration at which each epoch starts. An LR multiplier
written in epochs (:func:`multistep_in_epochs`, :func:`yolox_cosine_in_epochs`) gets
those epoch starts from the trainer. The YOLOX-IP recipe's parameter groups (weight decay
except on BatchNorm weights and biases) are :func:`yolox_param_groups`.
"""

import math
from typing import Optional, Sequence

import numpy as np
import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler, ParamScheduler

from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import _generate_optimizer_class_with_gradient_clipping

from .errors import InputError

__all__ = ["add_gradient_clipping", "multistep_in_epochs", "yolox_param_groups",
           "YOLOXCosineSchedule", "yolox_cosine_in_epochs"]


def add_gradient_clipping(optimizer: torch.optim.Optimizer, max_norm: float,
                          norm_type: float = 2.0) -> torch.optim.Optimizer:
    """Make ``optimizer.step()`` first scale all gradients so that their total
    ``norm_type``-norm is at most ``max_norm`` (``torch.nn.utils.clip_grad_norm_`` over every
    parameter; the authors clip at L2 35). In place; returns ``optimizer``.

    Uses Detectron2's own wrapper (the one behind ``SOLVER.CLIP_GRADIENTS`` of YAML
    configs) with a whole-model clipper; under AMP, the scaler unscales before ``step``.
    """
    if not max_norm > 0:
        raise InputError(f"train.clip_grad.max_norm must be > 0; got {max_norm!r}")

    def clip_total_norm(params):
        torch.nn.utils.clip_grad_norm_(list(params), max_norm, norm_type=norm_type)

    optimizer.__class__ = _generate_optimizer_class_with_gradient_clipping(
        type(optimizer), global_clipper=clip_total_norm
    )
    return optimizer


def multistep_in_epochs(
    *,
    milestones: Sequence[int],
    epoch_starts: Optional[Sequence[int]] = None,
    warmup_epochs: float = 0.0,
    warmup_factor: float = 0.001,
    gamma: float = 0.1,
) -> ParamScheduler:
    """LR multiplier for a schedule in epochs: x ``gamma`` at the start of each milestone
    epoch, after a linear warm-up from ``warmup_factor`` over the first ``warmup_epochs``
    (may be fractional) epochs.

    Args:
        milestones: epochs (integers) at whose start the LR drops, e.g. [16, 22].
        epoch_starts: iteration at which each epoch starts, one more entry than epochs
            (the last is the run's ``max_iter``); the trainer passes the run plan's.
    """
    if epoch_starts is None:
        raise InputError(
            "lr_multiplier is given in epochs (multistep_in_epochs) but train.epochs is not "
            "set; set train.epochs (e.g. train.epochs=24), or use an LR multiplier in "
            "iterations."
        )
    epochs = len(epoch_starts) - 1
    bad = [m for m in milestones if isinstance(m, bool) or not isinstance(m, int)
           or not 0 < m < epochs]
    if bad or list(milestones) != sorted(milestones):
        raise InputError(
            f"lr_multiplier.milestones={list(milestones)} must be increasing whole epochs "
            f"between 1 and {epochs - 1} (train.epochs={epochs})."
        )
    if not 0 <= warmup_epochs <= epochs:
        raise InputError(f"lr_multiplier.warmup_epochs={warmup_epochs} must be in [0, {epochs}].")
    max_iter = epoch_starts[-1]
    steps = MultiStepParamScheduler(
        values=[gamma**i for i in range(len(milestones) + 1)],
        milestones=[int(epoch_starts[m]) for m in milestones],
        num_updates=max_iter,
    )
    warmup_iters = float(np.interp(warmup_epochs, np.arange(epochs + 1), epoch_starts))
    if warmup_iters == 0:
        return steps
    return WarmupParamScheduler(steps, warmup_factor, warmup_iters / max_iter)


# ----- the YOLOX-IP recipe (the EFL authors' configs/det/efl/*yolox*.yaml) ----------------
def yolox_param_groups(model: torch.nn.Module, *, weight_decay: float,
                       decayed_bias_modules: Sequence[str] = ()) -> list:
    """Optimizer parameter groups with weight decay everywhere except on BatchNorm weights
    and on biases, as the authors' ``yolov5_except`` optimizer builds them: every module's
    ``bias`` is undecayed unless the module is named in ``decayed_bias_modules`` (theirs:
    the classification outputs ``roi_head.cls_preds.{0,1,2}``; ours: ``head.cls_score``),
    every BatchNorm ``weight`` undecayed, every other parameter decayed.

    For ``optimizer.params`` of a LazyConfig (as ``get_default_optimizer_params``; the
    trainer sets ``model``). ``decayed_bias_modules``: module names; a name also covers the
    modules below it (``head.cls_score`` is ``head.cls_score.0``, ``.1``, ``.2``); a name
    that is no module of ``model`` is an InputError. Returns three groups: BatchNorm
    weights (decay 0), decayed parameters (``weight_decay``), undecayed biases (decay 0).
    Parameters with ``requires_grad=False`` are left out.
    """
    names = dict(model.named_modules())
    unknown = [n for n in decayed_bias_modules if n not in names]
    if unknown:
        raise InputError(
            f"optimizer.params.decayed_bias_modules names {unknown}, which are not modules of "
            f"the model ({type(model).__name__}); give module names as model.named_modules() "
            "lists them, e.g. 'head.cls_score'."
        )
    prefixes = tuple(n + "." for n in decayed_bias_modules)
    norm, decayed, biases = [], [], []
    seen = set()

    def put(group, p):
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            group.append(p)

    for name, module in model.named_modules():
        keeps_decay = name in decayed_bias_modules or name.startswith(prefixes)
        for key, p in module.named_parameters(recurse=False):
            if key == "bias" and not keeps_decay:
                put(biases, p)
            elif key == "weight" and isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                put(norm, p)
            else:
                put(decayed, p)
    groups = [
        {"params": norm, "weight_decay": 0.0},
        {"params": decayed, "weight_decay": weight_decay},
        {"params": biases, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


class YOLOXCosineSchedule(ParamScheduler):
    """LR multiplier of the authors' ``yolox_base`` scheduler (warm-up ``yolox_cos``, then
    ``YoloXCosineLR``) at iteration ``i`` (0-based) of ``total`` iterations:

    - ``i < warmup``: (i / warmup)^2;
    - ``warmup <= i < flat``: b x (m + (1 - m) / 2 x (1 + cos(pi (i - warmup) / (flat - warmup))));
    - ``i >= flat``: b x m,

    with m = ``min_lr_scale`` and b = ((warmup - 1) / warmup)^2: their cosine takes as its
    base the LR the warm-up set for the iteration before it ends (1 without warm-up).
    """

    def __init__(self, warmup: int, flat: int, total: int, min_lr_scale: float):
        self.warmup, self.flat, self.total, self.min_lr_scale = warmup, flat, total, min_lr_scale
        self.base = ((warmup - 1) / warmup) ** 2 if warmup > 0 else 1.0

    def __call__(self, where: float) -> float:
        i = int(round(where * self.total))  # Detectron2's LRMultiplier passes i / total
        if i < self.warmup:
            return (i / self.warmup) ** 2
        m = self.min_lr_scale
        if i >= self.flat:
            return self.base * m
        phase = (i - self.warmup) / (self.flat - self.warmup)
        return self.base * (m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * phase)))


def yolox_cosine_in_epochs(
    *,
    epoch_starts: Optional[Sequence[int]] = None,
    warmup_epochs: float = 5,
    min_lr_scale: float = 0.05,
    flat_epochs: int = 15,
) -> ParamScheduler:
    """LR multiplier of the YOLOX-IP recipe in epochs: quadratic warm-up from 0 over
    ``warmup_epochs``, cosine down to ``min_lr_scale`` until ``flat_epochs`` before the end,
    flat after (their ``warmup_epochs: 5``, ``min_lr_scale: 0.05``, ``no_aug_epoch: 15``;
    :class:`YOLOXCosineSchedule` has the formula). ``epoch_starts``: as
    :func:`multistep_in_epochs` (the trainer passes the run plan's)."""
    if epoch_starts is None:
        raise InputError(
            "lr_multiplier is given in epochs (yolox_cosine_in_epochs) but train.epochs is "
            "not set; set train.epochs (e.g. train.epochs=300), or use an LR multiplier in "
            "iterations."
        )
    epochs = len(epoch_starts) - 1
    if isinstance(flat_epochs, bool) or not isinstance(flat_epochs, int) or not 0 <= flat_epochs < epochs:
        raise InputError(f"lr_multiplier.flat_epochs={flat_epochs!r} must be a whole number of "
                         f"epochs in [0, {epochs - 1}] (train.epochs={epochs}).")
    if not 0 <= warmup_epochs <= epochs - flat_epochs:
        raise InputError(f"lr_multiplier.warmup_epochs={warmup_epochs} must be in [0, "
                         f"{epochs - flat_epochs}] (train.epochs={epochs}, flat_epochs={flat_epochs}).")
    if not 0 <= min_lr_scale <= 1:
        raise InputError(f"lr_multiplier.min_lr_scale={min_lr_scale} must be in [0, 1].")
    warmup = int(round(float(np.interp(warmup_epochs, np.arange(epochs + 1), epoch_starts))))
    flat = int(epoch_starts[epochs - flat_epochs])
    if flat <= warmup:
        raise InputError(f"lr_multiplier: the cosine between epoch {warmup_epochs} and epoch "
                         f"{epochs - flat_epochs} is empty (train.epochs={epochs}).")
    return YOLOXCosineSchedule(warmup, flat, int(epoch_starts[-1]), min_lr_scale)
