"""FCOS whose classification loss is a module (``cls_loss``, e.g. Equalized Focal Loss);
nothing else changes."""

import torch
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.meta_arch.fcos import FCOSHead
from detectron2.utils.events import get_event_storage

from ..compat import FCOS, head_norm, matched_box_tensors
from ..config import cls_loss_from_config
from ..losses import DenseClassificationLoss
from .retinanet import check_cls_loss, foreground_one_hot

__all__ = ["EFLFCOS"]


@META_ARCH_REGISTRY.register()
class EFLFCOS(FCOS):
    """Detectron2's FCOS with ``loss_fcos_cls`` computed by its ``cls_loss`` module.

    Like :class:`EFLRetinaNet`: the loss is the submodule ``cls_loss`` and the normaliser is
    FCOS's own EMA of the positive count. Built from YAML through ``MODEL.FCOS`` (added by
    :func:`efl.config.add_efl_config`: Detectron2 has no FCOS options).
    """

    @configurable
    def __init__(self, *, cls_loss: DenseClassificationLoss, **kwargs):
        super().__init__(**kwargs)
        check_cls_loss(cls_loss, self.num_classes, model=type(self).__name__)
        self.cls_loss = cls_loss

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        fcos = cfg.MODEL.FCOS
        feature_shapes = [shapes[f] for f in fcos.IN_FEATURES]
        head = FCOSHead(
            input_shape=feature_shapes,
            num_classes=fcos.NUM_CLASSES,
            conv_dims=[feature_shapes[0].channels] * fcos.NUM_CONVS,
            norm=head_norm(fcos.HEAD_NORM),
            prior_prob=fcos.PRIOR_PROB,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": fcos.IN_FEATURES,
            "num_classes": fcos.NUM_CLASSES,
            "center_sampling_radius": fcos.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": fcos.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": fcos.FOCAL_LOSS_GAMMA,
            "test_score_thresh": fcos.SCORE_THRESH_TEST,
            "test_topk_candidates": fcos.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": fcos.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "cls_loss": cls_loss_from_config(
                cfg, fcos.NUM_CLASSES, fcos.FOCAL_LOSS_ALPHA, fcos.FOCAL_LOSS_GAMMA
            ),
        }

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
               pred_centerness):
        """Same inputs and outputs as :meth:`FCOS.losses`."""
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos_anchors = pos_mask.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_pos_anchors, 1), 300)

        # FCOS has no ignored anchors: every (image, anchor) row goes into the loss.
        targets = foreground_one_hot(gt_labels.flatten(), self.num_classes)  # (N * R, K)
        loss_cls = self.cls_loss(torch.cat(pred_logits, dim=1).flatten(0, 1), targets, normalizer)

        loss_box_reg = _dense_box_regression_loss(
            anchors, self.box2box_transform, pred_anchor_deltas, matched_box_tensors(gt_boxes), pos_mask,
            box_reg_loss_type="giou",
        )
        ctrness_targets = self.compute_ctrness_targets(anchors, gt_boxes)  # (N, R)
        pred_centerness = torch.cat(pred_centerness, dim=1).squeeze(dim=2)  # (N, R)
        ctrness_loss = F.binary_cross_entropy_with_logits(
            pred_centerness[pos_mask], ctrness_targets[pos_mask], reduction="sum"
        )
        return {
            "loss_fcos_cls": loss_cls,
            "loss_fcos_loc": loss_box_reg / normalizer,
            "loss_fcos_ctr": ctrness_loss / normalizer,
        }
