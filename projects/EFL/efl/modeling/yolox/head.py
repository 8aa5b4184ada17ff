"""YOLOX's decoupled head as YOLOX-IP uses it (United-Perception 52aaeb9,
``up/tasks/det/plugins/yolox/models/head/yolox_head.py``, ``YoloXHead`` with
``num_point: 2``): separate weights per level, anchor-based outputs for the ATSS path."""

import math
from typing import List

from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import build_anchor_generator

from .blocks import ConvBNAct, Norm

__all__ = ["YOLOXHead"]


class YOLOXHead(nn.Module):
    """Per level l (own weights): a 1x1 :class:`ConvBNAct` stem from the level's channels
    to C = int(256 x width), a classification and a box tower of two 3x3 ConvBNAct each,
    and 1x1 predictors: ``cls_score`` (A x K) on the classification tower, ``bbox_pred``
    (A x 4) and ``iou_pred`` (A; their ``obj_preds``, trained as the IoU branch by the
    ATSS path) on the box tower. Predictors start with PyTorch's default conv init and,
    for ``cls_score`` and ``iou_pred``, bias -log((1 - prior) / prior) (theirs: both).

    Channel layouts: anchor-major as Detectron2's heads (a x K + k, a x 4 + j); their
    classification output is class-major (k x A + a): efl.convert.up_yolox reorders it.
    """

    @configurable
    def __init__(self, *, input_shape: List[ShapeSpec], num_classes: int, num_anchors: int = 2,
                 width: float = 0.5, norm: Norm = "BN", prior_prob: float = 0.001):
        """
        Args:
            input_shape: one ShapeSpec per level (its ``channels`` used).
            num_classes: K, foreground classes; num_anchors: A per location.
            width: the width multiplier (S 0.5, M 0.75): C = int(256 x width).
        """
        super().__init__()
        channels = int(256 * width)
        self.stems, self.cls_convs, self.reg_convs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.cls_score, self.bbox_pred, self.iou_pred = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for shape in input_shape:
            self.stems.append(ConvBNAct(shape.channels, channels, 1, norm=norm))
            for towers in (self.cls_convs, self.reg_convs):
                towers.append(nn.Sequential(ConvBNAct(channels, channels, 3, norm=norm),
                                            ConvBNAct(channels, channels, 3, norm=norm)))
            self.cls_score.append(nn.Conv2d(channels, num_anchors * num_classes, 1))
            self.bbox_pred.append(nn.Conv2d(channels, num_anchors * 4, 1))
            self.iou_pred.append(nn.Conv2d(channels, num_anchors, 1))
        bias = -math.log((1 - prior_prob) / prior_prob)
        for conv in list(self.cls_score) + list(self.iou_pred):
            nn.init.constant_(conv.bias, bias)
        self.num_classes, self.num_anchors = num_classes, num_anchors

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        num_anchors = build_anchor_generator(cfg, input_shape).num_cell_anchors
        if len(set(num_anchors)) != 1:
            raise ValueError(f"YOLOXHead needs the same anchor count on every level; got {num_anchors}")
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "num_anchors": num_anchors[0],
            "width": cfg.MODEL.YOLOX.WIDTH,
            "norm": cfg.MODEL.YOLOX.NORM,
            "prior_prob": cfg.MODEL.RETINANET.PRIOR_PROB,
        }

    def forward(self, features):
        """
        Args:
            features: per level (N, C_l, H_l, W_l).
        Returns:
            logits, bbox_reg, iou: per level (N, A*K, H_l, W_l), (N, A*4, H_l, W_l),
            (N, A, H_l, W_l).
        """
        logits, bbox_reg, iou = [], [], []
        for i, feature in enumerate(features):
            x = self.stems[i](feature)
            box = self.reg_convs[i](x)
            logits.append(self.cls_score[i](self.cls_convs[i](x)))
            bbox_reg.append(self.bbox_pred[i](box))
            iou.append(self.iou_pred[i](box))
        return logits, bbox_reg, iou
