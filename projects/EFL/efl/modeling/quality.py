"""The quality-score variant of the improved detector: ATSSRetinaNet whose classification
score is trained as a localisation quality with QFL / EQFL (:mod:`efl.quality_loss`), as in
Generalized Focal Loss (Li et al., NeurIPS 2020).

The target of each positive anchor's class entry is the IoU of its decoded (detached) box
with its ground truth; at test the score is the class probability alone. The IoU branch is
removed (GFL's joint representation): the class score already is the quality, so a branch
trained only to be thrown away would cost a conv per level and leave parameters without a
gradient (DistributedDataParallel would need ``find_unused_parameters``).
"""

from typing import List, Optional

import torch

from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from ..quality_loss import EqualizedQualityFocalLoss, equalized_quality_focal_loss
from .atss import ATSSHead, ATSSRetinaNet, _mean_over_workers, box_iou_and_giou
from .retinanet import foreground_one_hot

__all__ = ["QualityHead", "QualityATSSRetinaNet"]


class QualityHead(ATSSHead):
    """:class:`ATSSHead` (GroupNorm towers) without its IoU branch."""

    def __init__(self, **kwargs):
        """Arguments as :class:`ATSSHead`."""
        super().__init__(**kwargs)
        del self.iou_pred

    def forward(self, features: List[torch.Tensor]):
        """
        Returns:
            logits, bbox_reg: per level, (N, A*K, Hi, Wi) and (N, A*4, Hi, Wi).
        """
        return RetinaNetHead.forward(self, features)


@META_ARCH_REGISTRY.register()
class QualityATSSRetinaNet(ATSSRetinaNet):
    """:class:`ATSSRetinaNet` with a :class:`QualityHead` and these losses (N as there):

    - ``loss_cls``: EQFL (``efl``, an :class:`EqualizedQualityFocalLoss`) or plain QFL
      (``efl=None``; beta = ``focal_loss_gamma``) over all anchors against the soft target
      IoU(decoded box, its GT) of the positive entries, / N;
    - ``loss_box_reg``: as ATSSRetinaNet's (GIoU weighted by the IoU target).

    Inference: score = sigmoid(cls), then ATSSRetinaNet's post-processing.
    """

    def __init__(self, *, efl: Optional[EqualizedQualityFocalLoss] = None, **kwargs):
        """``efl``: the EQFL module (its ``num_classes`` must be the model's); None: QFL.
        ``kwargs``: as :class:`ATSSRetinaNet` (``head`` a :class:`QualityHead`)."""
        super().__init__(efl=None, **kwargs)
        if efl is not None and (not isinstance(efl, EqualizedQualityFocalLoss)
                                or efl.num_classes != self.num_classes):
            raise ValueError(
                "QualityATSSRetinaNet needs efl=EqualizedQualityFocalLoss(num_classes="
                f"{self.num_classes}); got {efl!r}"
            )
        if self.efl_statistics != "paper":
            raise ValueError("QualityATSSRetinaNet supports efl_statistics='paper' only; got "
                             f"{self.efl_statistics!r}")
        self.efl = efl

    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes)

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
               pred_ious: Optional[list] = None):
        """As :meth:`ATSSRetinaNet.losses` without ``pred_ious``; returns ``loss_cls`` and
        ``loss_box_reg``."""
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        deltas = cat(pred_anchor_deltas, dim=1)[pos_mask].float()  # (P, 4)
        pos_anchors = Boxes.cat(anchors).tensor.expand(num_images, -1, -1)[pos_mask]
        pred_boxes = self.box2box_transform.apply_deltas(deltas, pos_anchors)
        iou, giou = box_iou_and_giou(pred_boxes, torch.stack(gt_boxes)[pos_mask].float())
        quality = iou.detach()

        totals = _mean_over_workers(torch.stack([pos_mask.sum().float(), quality.sum()]))
        get_event_storage().put_scalar("num_pos_anchors", pos_mask.sum().item() / num_images)
        logits = cat(pred_logits, dim=1).reshape(-1, self.num_classes)
        targets = foreground_one_hot(gt_labels.reshape(-1), self.num_classes)
        soft = logits.new_zeros(logits.shape[0], dtype=torch.float32)
        soft[pos_mask.reshape(-1)] = quality
        normalizer = totals[0].clamp(min=1.0)
        if self.efl is not None:
            loss_cls = self.efl(logits, targets, soft, normalizer)
        else:
            soft_targets = targets.float() * soft[:, None]
            beta = logits.new_tensor(self.focal_loss_gamma, dtype=torch.float32)
            loss_cls = equalized_quality_focal_loss(
                logits.float(), soft_targets, beta, 1.0).sum() / normalizer
        return {
            "loss_cls": loss_cls,
            "loss_box_reg": ((1 - giou) * quality).sum() / totals[1].clamp(min=1e-6),
        }

    def forward_inference(self, images, features, predictions):
        pred_logits, pred_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for i, image_size in enumerate(images.image_sizes):
            scores = [c[i].sigmoid() for c in pred_logits]
            deltas = [d[i] for d in pred_deltas]
            results.append(self.inference_single_image(anchors, scores, deltas, image_size))
        return results
