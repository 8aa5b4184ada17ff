"""YOLOX-IP from a YAML config: ``MODEL.YOLOX`` keys and the CSPDarknet + PAFPN backbone
builder (``MODEL.BACKBONE.NAME: build_yolox_pafpn_backbone``, ``MODEL.META_ARCHITECTURE:
YOLOXIP``). Everything else is Detectron2's and the improved detector's keys
(``MODEL.RETINANET.*``, ``MODEL.ANCHOR_GENERATOR.*``, ``MODEL.ATSS.*``, ``MODEL.EFL.*``,
``MODEL.PIXEL_*``), set as in configs/common/models/yolox_ip.py (tests/test_yolox.py builds
the same modules both ways)."""

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from .cspdarknet import CSPDarknet
from .pafpn import YOLOXPAFPN

__all__ = ["add_yolox_config", "build_yolox_pafpn_backbone"]


def add_yolox_config(cfg) -> None:
    """Add ``MODEL.YOLOX`` (and the improved detector's ``MODEL.ATSS`` / ``MODEL.EFL`` when
    absent): DEPTH / WIDTH multipliers (S 0.33 / 0.5, M 0.67 / 0.75), NORM ("BN" or
    "SyncBN"; eps 1e-3, momentum 0.03 either way), SIZE_DIVISIBILITY (32)."""
    if "ATSS" not in cfg.MODEL:
        from ...config import add_atss_config

        add_atss_config(cfg)
    cfg.MODEL.YOLOX = CN()
    cfg.MODEL.YOLOX.DEPTH = 0.33
    cfg.MODEL.YOLOX.WIDTH = 0.5
    cfg.MODEL.YOLOX.NORM = "BN"
    cfg.MODEL.YOLOX.SIZE_DIVISIBILITY = 32


@BACKBONE_REGISTRY.register()
def build_yolox_pafpn_backbone(cfg, input_shape: ShapeSpec) -> YOLOXPAFPN:
    """CSPDarknet (``MODEL.YOLOX.DEPTH`` / ``WIDTH``) under a PAFPN; outputs p3-p5."""
    y = cfg.MODEL.YOLOX
    bottom_up = CSPDarknet(y.DEPTH, y.WIDTH, in_channels=input_shape.channels, norm=y.NORM)
    return YOLOXPAFPN(bottom_up, depth=y.DEPTH, norm=y.NORM, size_divisibility=y.SIZE_DIVISIBILITY)
