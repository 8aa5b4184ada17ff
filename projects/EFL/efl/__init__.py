"""Equalized Focal Loss for Detectron2 one-stage detectors (Li et al., CVPR 2022)."""

from .losses import EqualizedFocalLoss
from .quality_loss import EqualizedQualityFocalLoss
from .equalization_losses import EqualizationLoss, EqualizationLossV2
from .config import add_atss_config, add_efl_config
from .modeling import ATSSRetinaNet, EFLFCOS, EFLRetinaNet

__version__ = "0.1.0"

__all__ = [
    "EqualizedFocalLoss", "EqualizedQualityFocalLoss", "EqualizationLoss", "EqualizationLossV2",
    "EFLRetinaNet", "EFLFCOS", "ATSSRetinaNet", "add_efl_config",
    "add_atss_config",
]
