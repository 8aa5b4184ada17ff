"""YOLOX-IP (issue 26): CSPDarknet, the YOLOX PAFPN and decoupled head, and the detector
that trains them through the improved detector's ATSS path; the YAML backbone builder."""

from .blocks import Bottleneck, ConvBNAct, CSPLayer, Focus, SPP
from .cspdarknet import YOLOX_SIZES, CSPDarknet
from .detector import QualityYOLOXIP, YOLOXIP
from .head import YOLOXHead
from .pafpn import YOLOXPAFPN
from .yaml import add_yolox_config, build_yolox_pafpn_backbone

__all__ = ["ConvBNAct", "Focus", "Bottleneck", "CSPLayer", "SPP", "CSPDarknet", "YOLOX_SIZES",
           "YOLOXPAFPN", "YOLOXHead", "YOLOXIP", "QualityYOLOXIP", "add_yolox_config", "build_yolox_pafpn_backbone"]
