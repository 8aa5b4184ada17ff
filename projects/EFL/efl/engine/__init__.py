"""Training: the run plan, the LazyConfig ``Trainer``, the run guarantees both trainers
register (and a ``DefaultTrainer`` subclass can), resume, config checks, the model EMA,
and the ``YAMLTrainer`` for Detectron2's YAML configs."""

from .guarantees import GradScalerCommit, register_run_guarantees
from .ema import EMASettings, ModelEMAUpdate, build_model_ema, ema_settings
from .config_checks import apply_overrides, check_device, check_efl_hyperparameters, load_config
from .hooks import EFLStateSyncCheck, EFLSummaryLogger, EvalHook, ResumeState
from .preemption import Preempted, PreemptionCheckpointer, forward_to_workers, preemption_signals
from .resume import ResumePoint, find_resume_point, resume_or_load
from .setup import RunPlan, dataset_names, plan_run, prepare_run_datasets
from .trainer import Trainer, quiet_input_error_tracebacks
from .yaml_trainer import YAMLTrainer

__all__ = [
    "RunPlan",
    "dataset_names",
    "plan_run",
    "prepare_run_datasets",
    "quiet_input_error_tracebacks",
    "Trainer",
    "YAMLTrainer",
    "register_run_guarantees",
    "GradScalerCommit",
    "resume_or_load",
    "ResumePoint",
    "find_resume_point",
    "EFLSummaryLogger",
    "ResumeState",
    "EFLStateSyncCheck",
    "EvalHook",
    "EMASettings",
    "ModelEMAUpdate",
    "build_model_ema",
    "ema_settings",
    "Preempted",
    "PreemptionCheckpointer",
    "forward_to_workers",
    "preemption_signals",
    "load_config",
    "apply_overrides",
    "check_device",
    "check_efl_hyperparameters",
]
