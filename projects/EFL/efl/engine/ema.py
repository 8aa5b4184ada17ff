"""Model EMA (the YOLOX-IP recipe's): an exponential moving average of every state entry
of the model, updated after each training step and used for evaluation.

Config (read here only, :func:`ema_settings`): ``train.ema = dict(enabled=True,
decay=0.9998, tau=2000)``. The average is ``torch.optim.swa_utils.AveragedModel`` with
``use_buffers=True`` (parameters and buffers: BatchNorm statistics, the EFL state) and the
authors' ``exp`` EMA (United-Perception ``up/utils/model/ema_helper.py``, ``ExpEMA``): at
the update after step t (0-based; t = the updates before this one)

    d_t = decay x (1 - exp(-t / tau)),   ema = d_t x ema + (1 - d_t) x model

for every floating-point entry (d_0 = 0: the first update copies the model). Integer
entries (BatchNorm's ``num_batches_tracked``) are copied from the model (theirs keep the
value of the model the EMA was built from; no output depends on it with a set momentum).

The trainer holds it as ``trainer.ema`` and in every checkpoint as ``ema`` (periodic,
final, preemption: a ``DetectionCheckpointer`` checkpointable; its state dict is the
averaged model's under ``module.`` plus ``n_averaged``, the update count), so an exact
resume continues it; evaluation uses ``trainer.ema.module``.
"""

import logging
import math
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from torch.optim.swa_utils import AveragedModel

from detectron2.engine import HookBase

from ..errors import ConfigError
from .hooks import unwrap_ddp

__all__ = ["EMASettings", "ema_settings", "exp_ema_multi_avg_fn", "build_model_ema",
           "ModelEMAUpdate", "ema_model_state", "use_checkpoint_ema"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EMASettings:
    """``decay``: the limit of d_t; ``tau``: its time constant in updates."""

    decay: float = 0.9998
    tau: float = 2000.0


def ema_settings(train) -> Optional[EMASettings]:
    """``train.ema`` (a dict: ``enabled``, ``decay``, ``tau``) checked; None when it is
    absent or not enabled. ConfigError for a bad value."""
    node = train.get("ema") if hasattr(train, "get") else None
    if not node or not node.get("enabled", False):
        return None
    unknown = sorted(set(node) - {"enabled", "decay", "tau"})
    if unknown:
        raise ConfigError(f"train.ema has unknown keys {unknown}; its keys are enabled, decay, tau.")
    settings = EMASettings(float(node.get("decay", EMASettings.decay)),
                           float(node.get("tau", EMASettings.tau)))
    if not 0 < settings.decay < 1:
        raise ConfigError(f"train.ema.decay={settings.decay} must be in (0, 1), e.g. 0.9998.")
    if not settings.tau > 0:
        raise ConfigError(f"train.ema.tau={settings.tau} must be > 0 (updates), e.g. 2000.")
    return settings


def exp_ema_multi_avg_fn(settings: EMASettings) -> Callable:
    """``AveragedModel``'s ``multi_avg_fn``: the module docstring's update, in place, on
    one group of same-device, same-dtype tensors; ``num_averaged`` is t."""

    def update(averaged: List[torch.Tensor], current: List[torch.Tensor], num_averaged) -> None:
        if not averaged[0].is_floating_point():
            for a, c in zip(averaged, current):
                a.copy_(c)
            return
        t = int(num_averaged)
        d = settings.decay * (1.0 - math.exp(-t / settings.tau))
        for a, c in zip(averaged, current):  # as theirs: ema *= d; ema += (1 - d) * model
            a.mul_(d)
            a.add_((1.0 - d) * c)

    return update


def build_model_ema(model: torch.nn.Module, settings: EMASettings) -> AveragedModel:
    """The EMA of ``model`` (not wrapped in DDP): a copy in eval mode, without gradients,
    on ``model``'s device; no update yet (``n_averaged`` 0: the first update copies)."""
    ema = AveragedModel(model, multi_avg_fn=exp_ema_multi_avg_fn(settings), use_buffers=True)
    ema.module.eval()
    ema.requires_grad_(False)
    return ema


class ModelEMAUpdate(HookBase):
    """After every step: ``ema.update_parameters(model)``. Register it after the hooks
    that finish the step's state (the GradScaler's EFL commit) and before those that save
    or evaluate it (``PeriodicCheckpointer``, ``EvalHook``)."""

    def __init__(self, ema: AveragedModel):
        self.ema = ema

    def after_step(self):
        with torch.no_grad():
            self.ema.update_parameters(unwrap_ddp(self.trainer.model))


def ema_model_state(checkpoint: dict) -> Optional[dict]:
    """The model state dict of the EMA a checkpoint holds (``checkpoint["ema"]``), or None."""
    state = checkpoint.get("ema")
    if not isinstance(state, dict):
        return None
    return {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}


def use_checkpoint_ema(train_cfg, model: torch.nn.Module, checkpoint: Optional[dict]) -> bool:
    """Evaluation and deployment with ``train.ema.enabled``: load into ``model`` the EMA
    weights that the checkpoint holds (``checkpoint``: what loading its model left, e.g.
    ``ema``), said in the log either way. Returns whether the EMA was loaded."""
    if ema_settings(train_cfg) is None:
        return False
    state = ema_model_state(checkpoint or {})
    if state is None:
        logger.info("train.ema.enabled but the checkpoint holds no model EMA: using its model "
                    "weights (a converted file of the authors holds their EMA there)")
        return False
    model.load_state_dict(state, strict=True)
    logger.info("Using the checkpoint's model EMA (train.ema.enabled)")
    return True
