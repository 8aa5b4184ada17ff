"""EFL in torchvision: ``torchvision.models.detection.RetinaNet`` whose classification head
computes a :class:`efl.losses.DenseClassificationLoss` (EFL, or any loss of this package
without quality targets) instead of torchvision's focal loss. Torch and torchvision only::

    model = torchvision.models.detection.retinanet_resnet50_fpn(num_classes=K, ...)
    use_cls_loss(model, EqualizedFocalLoss(K))  # K: the head's columns, background 0 too

The loss becomes ``model.head.classification_head.cls_loss``: its state is in the model's
``state_dict`` (``head.classification_head.cls_loss.pos_grad`` etc.) and
:func:`efl.losses.statistics_losses` finds it (e.g. for ``attach_grad_scaler``).
"""

import torch
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNetClassificationHead

from .dense_loss import DenseClassificationLoss

__all__ = ["ClassificationHeadWithLoss", "use_cls_loss"]


class ClassificationHeadWithLoss(RetinaNetClassificationHead):
    """torchvision's RetinaNet classification head (same layers, same forward) whose
    ``compute_loss`` calls its ``cls_loss`` module. Per image, as torchvision: the loss
    over the anchors that are not between the IoU thresholds, divided by the image's
    foreground count (at least 1); the mean over the images."""

    cls_loss: DenseClassificationLoss

    def compute_loss(self, targets, head_outputs, matched_idxs) -> torch.Tensor:
        """
        Args:
            targets: per image, a dict with ``labels`` (G,) int64 in [0, num_classes).
            head_outputs: ``cls_logits`` (N, R, num_classes).
            matched_idxs: per image, (R,) the matched box of each anchor, or -1
                (background) / -2 (between thresholds: ignored).
        Returns:
            0-dim loss.
        """
        losses = []
        for target, logits, matched in zip(targets, head_outputs["cls_logits"], matched_idxs):
            foreground = matched >= 0
            one_hot = torch.zeros_like(logits, dtype=torch.bool)
            one_hot[foreground, target["labels"][matched[foreground]]] = True
            valid = matched != self.BETWEEN_THRESHOLDS
            normalizer = foreground.sum().clamp(min=1).to(logits.dtype)
            losses.append(self.cls_loss(logits[valid], one_hot[valid], normalizer))
        return torch.stack(losses).sum() / len(targets)


def use_cls_loss(model: RetinaNet, cls_loss: DenseClassificationLoss) -> RetinaNet:
    """In place: ``model``'s classification head keeps its weights and computes
    ``cls_loss`` (whose ``num_classes`` must be the head's) instead of focal loss.
    Returns ``model``."""
    if not isinstance(model, RetinaNet):
        raise TypeError(f"model must be a torchvision RetinaNet; got {type(model).__name__}")
    head = model.head.classification_head
    if not isinstance(cls_loss, DenseClassificationLoss) or cls_loss.needs_quality:
        raise ValueError(
            "cls_loss must be a DenseClassificationLoss without quality targets (e.g. "
            f"EqualizedFocalLoss, SigmoidFocalLoss); got {type(cls_loss).__name__}"
        )
    if cls_loss.num_classes != head.num_classes:
        raise ValueError(
            f"cls_loss has num_classes={cls_loss.num_classes} but the RetinaNet head has "
            f"{head.num_classes} columns (torchvision's num_classes, background included)"
        )
    if not isinstance(head, ClassificationHeadWithLoss):
        head.__class__ = ClassificationHeadWithLoss  # same layers: only compute_loss differs
    head.cls_loss = cls_loss.to(next(head.parameters()).device)
    return model
