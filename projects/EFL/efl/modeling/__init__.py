"""EFL meta-architectures (registered in Detectron2's META_ARCH_REGISTRY on import)."""

from .atss import ATSSAssigner, ATSSHead, ATSSRetinaNet
from .fcos import EFLFCOS
from .fpn import LastLevelP6P7, LateralTopFPN
from .norm import FrozenStatsBatchNorm2d
from .quality import QualityATSSRetinaNet, QualityHead
from .retinanet import EFLRetinaNet

__all__ = ["EFLRetinaNet", "EFLFCOS", "ATSSRetinaNet", "ATSSHead", "ATSSAssigner", "LastLevelP6P7",
           "LateralTopFPN", "FrozenStatsBatchNorm2d", "QualityATSSRetinaNet", "QualityHead"]
