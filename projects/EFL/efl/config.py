"""YAML-config support for users of Detectron2's ``DefaultTrainer`` (LazyConfig users set
the loss module directly as ``model.cls_loss``)."""

from detectron2.config import CfgNode as CN

from .errors import ConfigError
from .focal_losses import QualityFocalLoss, SigmoidFocalLoss
from .losses import DenseClassificationLoss, EqualizedFocalLoss
from .quality_loss import EqualizedQualityFocalLoss

__all__ = ["add_atss_config", "add_efl_config", "cls_loss_from_config", "cls_loss_name", "CLS_LOSSES"]

# MODEL.EFL.LOSS values; a quality-score model (QualityATSSRetinaNet) reads "EFL" as EQFL
# and "focal" as QFL, the same loss with the IoU of the decoded box as its target.
CLS_LOSSES = ("EFL", "focal", "EQFL", "QFL", "EQL", "EQLv2")
_QUALITY_TWIN = {"EFL": "EQFL", "focal": "QFL"}


def add_efl_config(cfg) -> None:
    """Add ``MODEL.EFL`` and ``MODEL.FCOS`` (Detectron2's YAML config has no FCOS options)."""
    cfg.MODEL.EFL = CN()
    # The classification loss (cls_loss): one of CLS_LOSSES; "focal" is the model's focal
    # loss (MODEL.RETINANET / MODEL.FCOS FOCAL_LOSS_ALPHA, _GAMMA; QFL: beta = the gamma).
    cfg.MODEL.EFL.LOSS = "EFL"
    cfg.MODEL.EFL.GAMMA_B = 2.0
    cfg.MODEL.EFL.SCALE_FACTOR = 8.0
    cfg.MODEL.EFL.ALPHA = 0.25
    # EQL / EQLv2 (docs/baselines.md): the base loss ("focal": the model's focal alpha and
    # gamma; or "bce"), EQL's lambda (image frequency of DATASETS.TRAIN[0]; theirs for LVIS
    # v1) and EQLv2's f(g) = 1 / (1 + exp(-gamma (g - mu))) and positive up-weighting alpha.
    cfg.MODEL.EFL.EQL_BASE_LOSS = "focal"
    cfg.MODEL.EFL.EQL_LAMBDA = 0.0011
    cfg.MODEL.EFL.EQLV2_GAMMA = 12.0
    cfg.MODEL.EFL.EQLV2_MU = 0.8
    cfg.MODEL.EFL.EQLV2_ALPHA = 4.0
    # EFL's / EQFL's two components (both True: EFL; see efl.losses): the per-class
    # focusing factor gamma_j (False: gamma_b) and the weight gamma_j / gamma_b (False: 1).
    cfg.MODEL.EFL.FOCUSING = True
    cfg.MODEL.EFL.WEIGHTING = True
    # "focal" / "QFL": record EFL's per-class gradient statistics without using them.
    cfg.MODEL.EFL.RECORD_STATISTICS = False
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
    # Older name of MODEL.EFL.LOSS, still read: "" (default) follows MODEL.EFL.LOSS.
    cfg.MODEL.ATSS.CLASSIFICATION_LOSS = ""
    cfg.MODEL.ATSS.HEAD_NORM = "GN"
    # "paper" or "authors" (their A = 2 gradient statistics, for reproduction studies)
    cfg.MODEL.ATSS.EFL_STATISTICS = "paper"
    # build_atss_resnet_fpn_backbone: P6 from the C5 "lateral" (the authors') or "res5"
    cfg.MODEL.ATSS.P6_SOURCE = "lateral"
    cfg.MODEL.ATSS.RELU_BEFORE_P7 = False
    cfg.MODEL.ATSS.SIZE_DIVISIBILITY = 64  # batches padded to a multiple of it


def cls_loss_name(cfg, quality: bool = False) -> str:
    """The loss named by ``MODEL.EFL.LOSS`` (or the older ``MODEL.ATSS.CLASSIFICATION_LOSS``
    when set), as the model reads it: one of :data:`CLS_LOSSES`."""
    name = cfg.MODEL.EFL.LOSS
    legacy = cfg.MODEL.ATSS.get("CLASSIFICATION_LOSS", "") if "ATSS" in cfg.MODEL else ""
    if legacy:
        if name not in ("EFL", legacy):  # "EFL" is the default: the older key decides
            raise ConfigError(
                f"MODEL.EFL.LOSS={name!r} and MODEL.ATSS.CLASSIFICATION_LOSS={legacy!r} "
                "disagree; set MODEL.EFL.LOSS only (the other is its older name)"
            )
        name = legacy
    if name not in CLS_LOSSES:
        raise ConfigError(f"MODEL.EFL.LOSS must be one of {CLS_LOSSES}; got {name!r}")
    if quality and name in ("EQL", "EQLv2"):
        raise ConfigError(
            f"MODEL.EFL.LOSS={name!r}: the quality-score detector trains against IoU targets, "
            "which EQL / EQLv2 have no form for; use 'EFL' (EQFL) or 'focal' (QFL) with it")
    return _QUALITY_TWIN.get(name, name) if quality else name


def cls_loss_from_config(cfg, num_classes: int, focal_alpha: float = 0.25,
                         focal_gamma: float = 2.0, quality: bool = False) -> DenseClassificationLoss:
    """The ``cls_loss`` module of ``MODEL.EFL`` (:func:`cls_loss_name`) for ``num_classes``;
    ``focal_alpha`` / ``focal_gamma``: the model's focal-loss settings; ``quality``: the
    model trains against quality targets (QFL / EQFL)."""
    from .data.lvis import frequency_groups

    name = cls_loss_name(cfg, quality)
    efl = cfg.MODEL.EFL
    record = name in ("focal", "QFL") and efl.get("RECORD_STATISTICS", False)
    groups = None
    if (name not in ("focal", "QFL") or record) and efl.USE_FREQUENCY_GROUPS \
            and len(cfg.DATASETS.TRAIN):
        groups = frequency_groups(cfg.DATASETS.TRAIN[0], required=False)
    if name in ("EQL", "EQLv2"):
        return _equalization_loss(cfg, name, num_classes, focal_alpha, focal_gamma, groups)
    keys = {"focusing": "FOCUSING", "weighting": "WEIGHTING", "record_statistics": "RECORD_STATISTICS"}
    try:
        if name == "focal":
            return SigmoidFocalLoss(num_classes, alpha=focal_alpha, gamma=focal_gamma,
                                    class_groups=groups, record_statistics=record)
        if name == "QFL":
            return QualityFocalLoss(num_classes, beta=focal_gamma, class_groups=groups,
                                    record_statistics=record)
        components = {"focusing": efl.get("FOCUSING", True), "weighting": efl.get("WEIGHTING", True)}
        if name == "EQFL":
            return EqualizedQualityFocalLoss(num_classes, gamma_b=efl.GAMMA_B,
                                             scale_factor=efl.SCALE_FACTOR, class_groups=groups,
                                             **components)
        return EqualizedFocalLoss(num_classes, gamma_b=efl.GAMMA_B, scale_factor=efl.SCALE_FACTOR,
                                  alpha=efl.ALPHA, class_groups=groups, **components)
    except ValueError as e:
        key = next((k for k in keys if str(e).startswith(f"{k} ")), None)
        if key is None:
            raise
        raise ConfigError(
            f"MODEL.EFL.{keys[key]}={efl.get(keys[key])!r} is not valid: {e}. Set it to True or "
            f"False in the YAML file (default: {key != 'record_statistics'})."
        ) from None


def _equalization_loss(cfg, name, num_classes, focal_alpha, focal_gamma, groups):
    """EQL / EQLv2 from ``MODEL.EFL.EQL*``; a value out of range is a ConfigError."""
    from .data.image_frequency import class_image_frequency
    from .equalization_losses import EqualizationLoss, EqualizationLossV2

    efl = cfg.MODEL.EFL
    base = dict(base_loss=efl.EQL_BASE_LOSS, focal_alpha=focal_alpha, focal_gamma=focal_gamma)
    try:
        if name == "EQLv2":
            return EqualizationLossV2(num_classes, gamma=efl.EQLV2_GAMMA, mu=efl.EQLV2_MU,
                                      alpha=efl.EQLV2_ALPHA, class_groups=groups, **base)
        if not len(cfg.DATASETS.TRAIN):
            raise ConfigError("MODEL.EFL.LOSS='EQL' reads the image frequencies of "
                              "DATASETS.TRAIN[0]; DATASETS.TRAIN is empty")
        frequency = class_image_frequency(cfg.DATASETS.TRAIN[0])
        return EqualizationLoss(num_classes, frequency, lambda_=efl.EQL_LAMBDA, **base)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"MODEL.EFL (LOSS={name!r}): {e}. Fix the MODEL.EFL.EQL* key.") from None
