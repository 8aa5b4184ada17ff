"""YOLOX-IP-S (YOLOXIP), as the EFL authors' configs/det/efl/efl_yolox_small.yaml builds it
(United-Perception 52aaeb9; ``set_yolox_size(model, "m")`` gives YOLOX-IP-M):

- input: BGR 0-255, no mean/std; batches padded to a multiple of 32, the image at the
  top-left (their ``padding_type: left_top``, ``alignment: 32``);
- backbone: CSPDarknet, depth 0.33 / width 0.5 (M: 0.67 / 0.75), Focus stem, SPP, SiLU,
  BatchNorm eps 1e-3 / momentum 0.03, no pretraining;
- neck: the YOLOX PAFPN, P3-P5 (strides 8/16/32), CSP depth round(3 x 0.33);
- head: YOLOX's decoupled head, own weights per level, int(256 x width) channels,
  2 anchors per location, cls / box / IoU outputs, prior 0.001 on cls and IoU biases;
- anchors: aspect 1.0, sizes {3, 4} x stride, centres at i x stride (offset 0: their
  ``runtime.aligned: true``);
- ATSS top 18; focal loss here (configs/common/efl.py and quality.py swap it), GIoU
  weighted by the IoU target + L1 on the raw deltas (``loss_box_l1``), IoU-branch BCE;
- test: sigmoid(cls) x sigmoid(iou), no score threshold, per level top min(1000,
  anchors), class-wise NMS 0.65 over all levels, 300 detections, boxes clipped to the
  image.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform

from efl import SigmoidFocalLoss
from efl.modeling import ATSSAssigner, CSPDarknet, YOLOXHead, YOLOXIP, YOLOXPAFPN
from efl.modeling.yolox import YOLOX_SIZES

STRIDES = [8, 16, 32]


def set_yolox_size(model, size: str = None, depth: float = None, width: float = None):
    """Give ``model`` (this file's) the multipliers of ``size`` ("s", "m") or the ``depth``
    and ``width`` given, in backbone, neck and head, in place."""
    if size is not None:
        if size not in YOLOX_SIZES:
            from efl.errors import ConfigError

            raise ConfigError(f"set_yolox_size: size {size!r} is not a YOLOX-IP size; expected "
                              f"one of {', '.join(map(repr, YOLOX_SIZES))} (or depth= and width=).")
        depth, width = YOLOX_SIZES[size]
    model.backbone.bottom_up.depth = depth
    model.backbone.bottom_up.width = width
    model.backbone.depth = depth
    model.head.width = width
    base = int(64 * width)
    model.head.input_shape = [ShapeSpec(channels=c * base) for c in (4, 8, 16)]
    return model


model = L(YOLOXIP)(
    backbone=L(YOLOXPAFPN)(
        bottom_up=L(CSPDarknet)(depth=0.33, width=0.5, out_features=["dark3", "dark4", "dark5"]),
        in_features=["dark3", "dark4", "dark5"],
        depth=0.33,
        out_features=["p3", "p4", "p5"],
        size_divisibility=32,
    ),
    head=L(YOLOXHead)(
        input_shape=[ShapeSpec(channels=c) for c in (128, 256, 512)],
        num_classes="${..num_classes}",
        num_anchors=2,
        width=0.5,
        prior_prob=0.001,
    ),
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[3 * s, 4 * s] for s in STRIDES],
        aspect_ratios=[1.0],
        strides=STRIDES,
        offset=0.0,
    ),
    box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
    anchor_matcher=L(ATSSAssigner)(topk=18),
    num_classes=1203,
    head_in_features=["p3", "p4", "p5"],
    cls_loss=L(SigmoidFocalLoss)(
        num_classes="${..num_classes}", alpha="${..focal_loss_alpha}", gamma="${..focal_loss_gamma}"
    ),
    efl_statistics="paper",
    focal_loss_alpha=0.25,
    focal_loss_gamma=2.0,
    test_score_thresh=0.0,
    test_topk_candidates=1000,
    test_nms_thresh=0.65,
    max_detections_per_image=300,
    pixel_mean=[0.0, 0.0, 0.0],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)


def use_eqfl_quality(model, train_dataset: str, gamma_b=2.0, scale_factor=4.0):
    """Give ``model`` (this file's) EQFL as their eqfl_yolox_*.yaml do (gamma_b 2, s 4,
    fpn_levels 3): QualityYOLOXIP (the IoU branch kept; the class target of each positive
    the IoU of its decoded box), in place."""
    from efl import EqualizedQualityFocalLoss
    from efl.data.lvis import frequency_groups
    from efl.modeling import QualityYOLOXIP

    model._target_ = QualityYOLOXIP
    model.cls_loss = L(EqualizedQualityFocalLoss)(
        num_classes="${..num_classes}", gamma_b=gamma_b, scale_factor=scale_factor,
        class_groups=L(frequency_groups)(dataset_name=train_dataset, required=False),
    )
    return model
