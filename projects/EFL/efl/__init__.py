"""Equalized Focal Loss for Detectron2 one-stage detectors (Li et al., CVPR 2022).

The losses (:mod:`efl.losses`, :mod:`efl.quality_loss`, :mod:`efl.focal_losses`) need torch
alone; the Detectron2 parts (configs, meta-architectures, registered on import) are
imported here only when Detectron2 is installed.
"""

import importlib.util

from .focal_losses import QualityFocalLoss, SigmoidFocalLoss
from .losses import DenseClassificationLoss, EqualizedFocalLoss, statistics_losses
from .quality_loss import EqualizedQualityFocalLoss
from .equalization_losses import EqualizationLoss, EqualizationLossV2

__version__ = "0.1.0"

__all__ = [
    "DenseClassificationLoss", "EqualizedFocalLoss", "EqualizedQualityFocalLoss",
    "SigmoidFocalLoss", "QualityFocalLoss", "EqualizationLoss", "EqualizationLossV2",
    "statistics_losses",
]


def _detectron2_available() -> bool:
    try:
        return importlib.util.find_spec("detectron2") is not None
    except ValueError:  # sys.modules["detectron2"] is None: import blocked on purpose
        return False


if _detectron2_available():  # any ImportError inside is a real error: not swallowed
    from .config import add_atss_config, add_efl_config
    from .modeling import ATSSRetinaNet, EFLFCOS, EFLRetinaNet, QualityATSSRetinaNet
    from .modeling.yolox import YOLOXIP, add_yolox_config

    __all__ += ["EFLRetinaNet", "EFLFCOS", "ATSSRetinaNet", "QualityATSSRetinaNet", "YOLOXIP",
                "add_efl_config", "add_atss_config", "add_yolox_config"]
