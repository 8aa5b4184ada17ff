"""Training: the LazyConfig ``Trainer``, its hooks, and config checks."""

from .config_checks import apply_overrides, check_device, check_efl_hyperparameters, load_config
from .hooks import EFLStateSyncCheck, EFLSummaryLogger, EvalHook, ResumeState
from .trainer import Trainer

__all__ = [
    "Trainer",
    "EFLSummaryLogger",
    "ResumeState",
    "EFLStateSyncCheck",
    "EvalHook",
    "load_config",
    "apply_overrides",
    "check_device",
    "check_efl_hyperparameters",
]
