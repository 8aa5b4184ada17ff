"""EFL meta-architectures and the YAML backbones (improved detector, YOLOX-IP) (registered in
Detectron2's META_ARCH_REGISTRY / BACKBONE_REGISTRY on import)."""

from .atss import ATSSAssigner, ATSSHead, ATSSRetinaNet
from .backbone import build_atss_resnet_fpn_backbone
from .fcos import EFLFCOS
from .fpn import LastLevelP6P7, LateralTopFPN
from .norm import FrozenStatsBatchNorm2d
from .quality import QualityATSSRetinaNet, QualityHead
from .retinanet import EFLRetinaNet
from .yolox import QualityYOLOXIP, YOLOXIP, YOLOXHead, YOLOXPAFPN, CSPDarknet, build_yolox_pafpn_backbone

__all__ = ["EFLRetinaNet", "EFLFCOS", "ATSSRetinaNet", "ATSSHead", "ATSSAssigner", "LastLevelP6P7",
           "LateralTopFPN", "FrozenStatsBatchNorm2d", "QualityATSSRetinaNet", "QualityHead",
           "build_atss_resnet_fpn_backbone", "YOLOXIP", "QualityYOLOXIP", "YOLOXHead", "YOLOXPAFPN", "CSPDarknet",
           "build_yolox_pafpn_backbone"]
