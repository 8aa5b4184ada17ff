"""Datasets: LVIS-format registration and checks (:mod:`efl.data.lvis`), the resumable
training loader (:mod:`efl.data.resumable`), the embedded long-tailed synthetic dataset
(:mod:`efl.data.synthetic`) and its registration (:mod:`efl.data.builtin`)."""

from . import builtin  # noqa: F401  (registers synthetic_lt_{train,val})
from .lvis import (
    DatasetFilesMissing,
    build_train_loader,
    frequency_groups,
    load_lvis_format,
    prepare_datasets,
    register_lvis_format,
)
from .image_frequency import class_image_frequency
from .resumable import ResumableTrainLoader
from .synthetic import SyntheticLongTailConfig, generate_synthetic_lvis

__all__ = [
    "DatasetFilesMissing",
    "build_train_loader",
    "frequency_groups",
    "class_image_frequency",
    "load_lvis_format",
    "prepare_datasets",
    "ResumableTrainLoader",
    "register_lvis_format",
    "SyntheticLongTailConfig",
    "generate_synthetic_lvis",
]
