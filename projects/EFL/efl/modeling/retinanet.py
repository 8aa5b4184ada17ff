"""RetinaNet whose classification loss is Equalized Focal Loss; nothing else changes."""

import torch

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.utils.events import get_event_storage

from ..config import efl_from_config
from ..losses import EqualizedFocalLoss

__all__ = ["EFLRetinaNet", "check_efl_matches", "foreground_one_hot"]


def foreground_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(M,) labels in [0, K], K meaning background -> (M, K) bool one-hot targets.

    Bool (1 byte per entry) rather than ``F.one_hot``'s int64: with K = 1203 that is
    ~100 MB instead of ~800 MB per batch, and the loss need not check the values.
    """
    targets = torch.zeros(labels.shape[0], num_classes, dtype=torch.bool, device=labels.device)
    rows = torch.nonzero(labels < num_classes).squeeze(1)
    targets[rows, labels[rows]] = True
    return targets


def check_efl_matches(efl, num_classes: int) -> None:
    """A clear error when the loss module does not fit the model."""
    if not isinstance(efl, EqualizedFocalLoss):
        raise ValueError(f"efl must be an EqualizedFocalLoss module; got {type(efl).__name__}")
    if efl.num_classes != num_classes:
        raise ValueError(
            f"the EFL loss has num_classes={efl.num_classes} but the model has "
            f"num_classes={num_classes}; set both to the dataset's category count"
        )


@META_ARCH_REGISTRY.register()
class EFLRetinaNet(RetinaNet):
    """Detectron2's RetinaNet with ``loss_cls`` computed by :class:`EqualizedFocalLoss`.

    The loss module is the submodule ``efl``, so its state is saved with the model. The
    normaliser is RetinaNet's own (an EMA of the positive-anchor count), so this model and
    a stock RetinaNet with the same config differ in the classification loss alone.
    """

    @configurable
    def __init__(self, *, efl: EqualizedFocalLoss, **kwargs):
        """
        Args:
            efl: the loss module; its ``num_classes`` must equal the model's.
            kwargs: everything :class:`RetinaNet` takes.
        """
        super().__init__(**kwargs)
        check_efl_matches(efl, self.num_classes)
        self.efl = efl

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["efl"] = efl_from_config(cfg, ret["num_classes"])
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
        loss_cls = self.efl(cat(pred_logits, dim=1)[valid_mask], targets, normalizer)

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
