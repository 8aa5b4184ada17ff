"""Optimisation pieces of the EFL authors' recipe that Detectron2's LazyConfig has no key
for: clipping the total gradient norm, and LR schedules given in epochs.

Config keys (``train``): ``clip_grad = dict(enabled, max_norm, norm_type)``, and
``epochs``: when set, the trainer resolves it at start-up, from the training loader's
epochs (the repeat-factor-expanded set cut into global batches), to ``train.max_iter`` and
``train.epoch_starts`` (the iteration at which each epoch starts), and logs both. An LR
multiplier written in epochs (:func:`multistep_in_epochs`) reads ``train.epoch_starts``.
"""

import logging
from typing import List, Optional, Sequence

import numpy as np
import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler, ParamScheduler

from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import _generate_optimizer_class_with_gradient_clipping

from .errors import InputError

__all__ = ["add_gradient_clipping", "multistep_in_epochs", "resolve_epoch_schedule"]

logger = logging.getLogger(__name__)


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


def resolve_epoch_schedule(cfg, loader) -> Optional[List[int]]:
    """If ``cfg.train.epochs`` is set: set ``cfg.train.max_iter`` and ``cfg.train.epoch_starts``
    from ``loader`` (which must expose ``epoch_starts(num_epochs)``, as
    ``efl.data.lvis.build_train_loader``'s loader does) and log them. Returns the epoch starts
    (or None)."""
    epochs = cfg.train.get("epochs")
    if epochs is None:
        return None
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise InputError(f"train.epochs must be a positive integer; got {epochs!r}")
    if not hasattr(loader, "epoch_starts"):
        raise InputError(
            f"train.epochs={epochs} needs a training loader that knows its epochs; "
            f"dataloader.train builds a {type(loader).__name__}. Use "
            "efl.data.lvis.build_train_loader, or set train.epochs=None and train.max_iter."
        )
    starts = [int(s) for s in loader.epoch_starts(epochs)]
    lengths = np.diff(starts)
    logger.info(
        f"Schedule: train.epochs={epochs} epochs of "
        + (f"{lengths[0]}" if lengths.min() == lengths.max() else f"{lengths.min()}-{lengths.max()}")
        + f" iterations ({getattr(loader, 'describe_epoch', lambda: '')()}) -> train.max_iter="
        f"{starts[-1]}" + (f" (the config's {cfg.train.max_iter} is replaced)"
                           if cfg.train.get("max_iter") not in (None, starts[-1]) else "")
    )
    cfg.train.max_iter = starts[-1]
    cfg.train.epoch_starts = starts
    return starts


def multistep_in_epochs(
    *,
    epoch_starts: Optional[Sequence[int]],
    milestones: Sequence[int],
    warmup_epochs: float = 0.0,
    warmup_factor: float = 0.001,
    gamma: float = 0.1,
) -> ParamScheduler:
    """LR multiplier for a schedule in epochs: x ``gamma`` at the start of each milestone
    epoch, after a linear warm-up from ``warmup_factor`` over the first ``warmup_epochs``
    (may be fractional) epochs.

    Args:
        epoch_starts: iteration at which each epoch starts, one more entry than epochs
            (the last is ``train.max_iter``); configs pass ``"${train.epoch_starts}"``.
        milestones: epochs (integers) at whose start the LR drops, e.g. [16, 22].
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
