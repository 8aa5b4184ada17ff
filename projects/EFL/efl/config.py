"""YAML-config support for users of Detectron2's ``DefaultTrainer`` (LazyConfig users set
the same values directly on ``model.efl``)."""

from detectron2.config import CfgNode as CN

from .losses import EqualizedFocalLoss

__all__ = ["add_atss_config", "add_efl_config", "efl_from_config"]


def add_efl_config(cfg) -> None:
    """Add ``MODEL.EFL`` and ``MODEL.FCOS`` (Detectron2's YAML config has no FCOS options)."""
    cfg.MODEL.EFL = CN()
    cfg.MODEL.EFL.GAMMA_B = 2.0
    cfg.MODEL.EFL.SCALE_FACTOR = 8.0
    cfg.MODEL.EFL.ALPHA = 0.25
    # Put mean g / gamma of the LVIS r/c/f groups of DATASETS.TRAIN[0] into EventStorage.
    cfg.MODEL.EFL.USE_FREQUENCY_GROUPS = True

    if "FCOS" not in cfg.MODEL:  # add_atss_config may have called this already
        cfg.MODEL.FCOS = CN()
        cfg.MODEL.FCOS.NUM_CLASSES = 80
        cfg.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
        cfg.MODEL.FCOS.NUM_CONVS = 4
        cfg.MODEL.FCOS.HEAD_NORM = "GN"
        cfg.MODEL.FCOS.PRIOR_PROB = 0.01
        cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
        cfg.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
        cfg.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0
        cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.2
        cfg.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000
        cfg.MODEL.FCOS.NMS_THRESH_TEST = 0.6


def add_atss_config(cfg) -> None:
    """Add ``MODEL.ATSS`` for ``ATSSRetinaNet`` and ``build_atss_resnet_fpn_backbone`` (and
    ``MODEL.EFL``). The RetinaNet options (``MODEL.RETINANET.*``: classes, prior, NMS,
    top-k, ...) keep their meaning; ``MODEL.RESNETS.NORM`` also takes ``"FrozenStatsBN"``
    (the authors' BN) with this backbone. The other keys the authors' detector needs (RGB,
    mean/std, stride on the 3x3, anchors) are Detectron2's own: docs/authors-detector.md."""
    if "EFL" not in cfg.MODEL:
        add_efl_config(cfg)
    cfg.MODEL.ATSS = CN()
    cfg.MODEL.ATSS.TOPK = 18  # candidate anchors per level and box
    cfg.MODEL.ATSS.CLASSIFICATION_LOSS = "EFL"  # or "focal"
    cfg.MODEL.ATSS.HEAD_NORM = "GN"
    # "paper" or "authors" (their A = 2 gradient statistics, for reproduction studies)
    cfg.MODEL.ATSS.EFL_STATISTICS = "paper"
    # build_atss_resnet_fpn_backbone: P6 from the C5 "lateral" (the authors') or "res5"
    cfg.MODEL.ATSS.P6_SOURCE = "lateral"
    cfg.MODEL.ATSS.RELU_BEFORE_P7 = False
    cfg.MODEL.ATSS.SIZE_DIVISIBILITY = 64  # batches padded to a multiple of it


def efl_from_config(cfg, num_classes: int) -> EqualizedFocalLoss:
    """The ``EqualizedFocalLoss`` described by ``cfg.MODEL.EFL`` for ``num_classes``."""
    from .data.lvis import frequency_groups

    groups = None
    if cfg.MODEL.EFL.USE_FREQUENCY_GROUPS and len(cfg.DATASETS.TRAIN):
        groups = frequency_groups(cfg.DATASETS.TRAIN[0], required=False)
    return EqualizedFocalLoss(
        num_classes,
        gamma_b=cfg.MODEL.EFL.GAMMA_B,
        scale_factor=cfg.MODEL.EFL.SCALE_FACTOR,
        alpha=cfg.MODEL.EFL.ALPHA,
        class_groups=groups,
    )
