"""The EFL authors' improved one-stage detector (ATSSRetinaNet) with R-50-FPN P3-P7, as in
their code (United-Perception 52aaeb9; docs/authors-detector.md has each setting with its
file and line in their code):

- input: RGB, (x / 255 - ImageNet mean) / ImageNet std, i.e. pixel mean/std in 0-255 units
  below; batches padded to a multiple of 64;
- backbone: ResNet-50 "pytorch" style (stride on the 3x3 conv), torchvision's ImageNet
  weights (the LVIS configs' train.init_checkpoint), BN with fixed running statistics and
  trained affine in res3-res5 (FrozenStatsBatchNorm2d), stem + res2 frozen;
- neck: FPN P3-P7, 256 channels; P6 = 3x3 stride-2 conv of the C5 lateral (the 1x1
  output), P7 from P6, no ReLU between;
- head: 4 x (3x3 conv, GroupNorm 32, ReLU) cls and box towers, IoU branch on the box
  tower, cls prior 0.001;
- anchors: 2 per location, aspect 1.0, sizes {6, 8} x stride (centres at (i + 0.5) x stride);
- ATSS: top 18 anchors per level, IoU >= mean + std, centre inside the box;
- losses: focal loss here (``cls_loss``; configs/common/efl.py puts EFL in its place), GIoU
  weighted by the IoU target, IoU-branch BCE;
- test: sigmoid(cls) * sigmoid(iou), no score threshold, per level top min(6000, anchors),
  class-wise NMS 0.5 over all levels, 300 detections per image (the authors' order:
  ATSSRetinaNet.inference_single_image).
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.box_regression import Box2BoxTransform

from efl import SigmoidFocalLoss
from efl.modeling import (
    ATSSAssigner, ATSSHead, ATSSRetinaNet, FrozenStatsBatchNorm2d, LastLevelP6P7, LateralTopFPN,
)

STRIDES = [8, 16, 32, 64, 128]

model = L(ATSSRetinaNet)(
    backbone=L(LateralTopFPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm=FrozenStatsBatchNorm2d),
            stages=L(ResNet.make_default_stages)(
                depth=50, stride_in_1x1=False, norm=FrozenStatsBatchNorm2d
            ),
            out_features=["res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        top_block=L(LastLevelP6P7)(  # on the 256-channel C5 lateral (LateralTopFPN)
            in_channels="${..out_channels}", out_channels="${..out_channels}",
            in_feature="res5", relu_before_p7=False,
        ),
        size_divisibility=64,
    ),
    head=L(ATSSHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256],
        norm="GN",
        prior_prob=0.001,
        num_anchors=2,
    ),
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[6 * s, 8 * s] for s in STRIDES],
        aspect_ratios=[1.0],
        strides=STRIDES,
        offset=0.5,
    ),
    box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
    anchor_matcher=L(ATSSAssigner)(topk=18),
    num_classes=1203,
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    cls_loss=L(SigmoidFocalLoss)(
        num_classes="${..num_classes}", alpha="${..focal_loss_alpha}", gamma="${..focal_loss_gamma}"
    ),
    efl_statistics="paper",  # "authors": their A = 2 statistics (docs/authors-detector.md)
    focal_loss_alpha=0.25,
    focal_loss_gamma=2.0,
    test_score_thresh=0.0,
    test_topk_candidates=6000,
    test_nms_thresh=0.5,
    max_detections_per_image=300,
    pixel_mean=[123.675, 116.280, 103.530],  # 255 x ImageNet mean, RGB
    pixel_std=[58.395, 57.120, 57.375],  # 255 x ImageNet std
    input_format="RGB",
)
