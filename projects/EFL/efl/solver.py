"""Optimisation pieces of the EFL authors' recipe that Detectron2's LazyConfig has no key
for: clipping the total gradient norm, and LR schedules given in epochs.

Config keys (``train``): ``clip_grad = dict(enabled, max_norm, norm_type)``, and
``epochs``: when set, the run plan (:func:`efl.engine.plan_run`) resolves it at start-up,
from the training loader's epochs (the repeat-factor-expanded set cut into global batches),
to the run's ``max_iter`` and the iteration at which each epoch starts. An LR multiplier
written in epochs (:func:`multistep_in_epochs`) gets those epoch starts from the trainer.
"""

from typing import Optional, Sequence

import numpy as np
import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler, ParamScheduler

from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import _generate_optimizer_class_with_gradient_clipping

from .errors import InputError

__all__ = ["add_gradient_clipping", "multistep_in_epochs"]


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
