"""The improved detector's backbone for YAML configs (``MODEL.BACKBONE.NAME:
build_atss_resnet_fpn_backbone``, keys from :func:`efl.config.add_atss_config`). With the
defaults and the YAML lines in docs/authors-detector.md it builds the modules of
``configs/common/models/atss.py`` (same classes, names and shapes; tests/test_atss_yaml.py)."""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet, build_resnet_backbone

from .fpn import LastLevelP6P7, LateralTopFPN
from .norm import NORM_NAMES

__all__ = ["build_atss_resnet_fpn_backbone", "build_resnet"]

P6_SOURCES = ("lateral", "res5")


def build_resnet(cfg, input_shape: ShapeSpec) -> ResNet:
    """Detectron2's ``build_resnet_backbone`` (every ``MODEL.RESNETS`` key as there) that
    also takes the names in :data:`efl.modeling.norm.NORM_NAMES` for ``MODEL.RESNETS.NORM``
    (``"FrozenStatsBN"``: the authors' BN, fixed statistics, trained affine)."""
    norm = cfg.MODEL.RESNETS.NORM
    if norm not in NORM_NAMES:
        return build_resnet_backbone(cfg, input_shape)
    # Built with BN and nothing frozen, its norms swapped, then frozen: ResNet.freeze
    # makes the stem / first stages' parameters constant, as with a norm given by class.
    plain = cfg.clone()
    plain.defrost()
    plain.MODEL.RESNETS.NORM = "BN"
    plain.MODEL.BACKBONE.FREEZE_AT = 0
    resnet = NORM_NAMES[norm].convert(build_resnet_backbone(plain, input_shape))
    return resnet.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_atss_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet-FPN P3-P7 of the improved detector.

    ``MODEL.ATSS.P6_SOURCE``: ``"lateral"`` (the authors': P6 = 3x3 s2 conv of the C5
    lateral, :class:`LateralTopFPN`, xavier-normal init) or ``"res5"`` (Detectron2's
    :class:`FPN`, P6 from the raw res5 output); ``MODEL.ATSS.RELU_BEFORE_P7``;
    ``MODEL.ATSS.SIZE_DIVISIBILITY``: batches padded to a multiple of it (authors: 64).
    """
    atss = cfg.MODEL.ATSS
    if atss.P6_SOURCE not in P6_SOURCES:
        raise ValueError(
            f"MODEL.ATSS.P6_SOURCE must be one of {P6_SOURCES}; got {atss.P6_SOURCE!r} "
            "('lateral': the EFL authors' P6 from the C5 lateral; 'res5': from res5)"
        )
    bottom_up = build_resnet(cfg, input_shape)
    in_features = cfg.MODEL.FPN.IN_FEATURES
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_in = out_channels if atss.P6_SOURCE == "lateral" else bottom_up.output_shape()["res5"].channels
    kwargs = dict(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(top_in, out_channels, in_feature="res5",
                                relu_before_p7=atss.RELU_BEFORE_P7),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
    if atss.P6_SOURCE == "lateral":
        return LateralTopFPN(**kwargs, size_divisibility=atss.SIZE_DIVISIBILITY)
    fpn = FPN(**kwargs)
    fpn._size_divisibility = atss.SIZE_DIVISIBILITY  # FPN has no argument for it
    return fpn
