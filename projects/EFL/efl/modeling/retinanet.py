"""RetinaNet whose classification loss is a module (``cls_loss``: Equalized Focal Loss, or
:class:`efl.focal_losses.SigmoidFocalLoss` for the stock loss); nothing else changes."""

import torch

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.utils.events import get_event_storage

from ..config import cls_loss_from_config
from ..losses import DenseClassificationLoss

__all__ = ["EFLRetinaNet", "check_cls_loss", "foreground_one_hot"]


def foreground_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(M,) labels in [0, K], K meaning background -> (M, K) bool one-hot targets.

    Bool (1 byte per entry) rather than ``F.one_hot``'s int64: with K = 1203 that is
    ~100 MB instead of ~800 MB per batch, and the loss need not check the values.
    """
    targets = torch.zeros(labels.shape[0], num_classes, dtype=torch.bool, device=labels.device)
    rows = torch.nonzero(labels < num_classes).squeeze(1)
    targets[rows, labels[rows]] = True
    return targets


def check_cls_loss(cls_loss, num_classes: int, quality: bool = False, model: str = "") -> None:
    """A clear error when the classification loss module does not fit the model: not a
    :class:`DenseClassificationLoss`, another ``num_classes``, or a loss that needs the
    quality targets in a model that gives none (``quality`` False) or the reverse."""
    model = model or "the model"
    if not isinstance(cls_loss, DenseClassificationLoss):
        raise ValueError(
            f"cls_loss must be a DenseClassificationLoss module (e.g. EqualizedFocalLoss, "
            f"SigmoidFocalLoss); got {type(cls_loss).__name__}"
        )
    name = type(cls_loss).__name__
    if cls_loss.num_classes != num_classes:
        raise ValueError(
            f"cls_loss {name} has num_classes={cls_loss.num_classes} but {model} has "
            f"num_classes={num_classes}; set both to the dataset's category count"
        )
    if cls_loss.needs_quality != quality:
        raise ValueError(
            f"cls_loss {name} {'needs' if cls_loss.needs_quality else 'takes no'} quality "
            f"targets but {model} gives {'them' if quality else 'none'}: use "
            + ("QualityFocalLoss or EqualizedQualityFocalLoss" if quality else
               "SigmoidFocalLoss or EqualizedFocalLoss (QFL/EQFL: QualityATSSRetinaNet)")
        )


@META_ARCH_REGISTRY.register()
class EFLRetinaNet(RetinaNet):
    """Detectron2's RetinaNet with ``loss_cls`` computed by its ``cls_loss`` module
    (:class:`EqualizedFocalLoss`; :class:`SigmoidFocalLoss` gives the stock RetinaNet's
    losses).

    The loss is the submodule ``cls_loss``, so its state is saved with the model. The
    normaliser is RetinaNet's own (an EMA of the positive-anchor count), so this model and
    a stock RetinaNet with the same config differ in the classification loss alone.
    """

    @configurable
    def __init__(self, *, cls_loss: DenseClassificationLoss, **kwargs):
        """
        Args:
            cls_loss: the classification loss; its ``num_classes`` must equal the model's
                and it takes no quality targets.
            kwargs: everything :class:`RetinaNet` takes.
        """
        super().__init__(**kwargs)
        check_cls_loss(cls_loss, self.num_classes, model=type(self).__name__)
        self.cls_loss = cls_loss

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["cls_loss"] = cls_loss_from_config(
            cfg, ret["num_classes"], ret["focal_loss_alpha"], ret["focal_loss_gamma"]
        )
        return ret

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """Same inputs and outputs as :meth:`RetinaNet.losses`."""
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        valid_mask = gt_labels >= 0
        pos_mask = valid_mask & (gt_labels != self.num_classes)
        num_pos_anchors = pos_mask.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_pos_anchors, 1), 100)

        targets = foreground_one_hot(gt_labels[valid_mask], self.num_classes)  # (R_valid, K)
        loss_cls = self.cls_loss(cat(pred_logits, dim=1)[valid_mask], targets, normalizer)

        loss_box_reg = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg / normalizer}
