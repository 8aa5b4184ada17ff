"""The quality-score variant of the improved detector: ATSSRetinaNet whose classification
score is trained as a localisation quality with QFL / EQFL (:class:`efl.focal_losses.
QualityFocalLoss`, :class:`efl.quality_loss.EqualizedQualityFocalLoss`), as in Generalized
Focal Loss (Li et al., NeurIPS 2020).

The target of each positive anchor's class entry is the IoU of its decoded (detached) box
with its ground truth; at test the score is the class probability alone. The IoU branch is
off (GFL's joint representation): the class score already is the quality, so a branch
trained only to be thrown away would cost a conv per level and leave parameters without a
gradient (DistributedDataParallel would need ``find_unused_parameters``).
"""

from typing import Optional

import torch

from detectron2.modeling import META_ARCH_REGISTRY

from .atss import ATSSHead, ATSSRetinaNet

__all__ = ["QualityHead", "QualityATSSRetinaNet"]


class QualityHead(ATSSHead):
    """:class:`ATSSHead` (GroupNorm towers) without its IoU branch: returns logits and
    bbox_reg per level, (N, A*K, Hi, Wi) and (N, A*4, Hi, Wi)."""

    iou_branch = False


@META_ARCH_REGISTRY.register()
class QualityATSSRetinaNet(ATSSRetinaNet):
    """:class:`ATSSRetinaNet` with a :class:`QualityHead` whose ``cls_loss`` (QFL or EQFL)
    trains the class score against the IoU of each positive's decoded box; ``loss_cls`` and
    ``loss_box_reg`` as there, no ``loss_iou``. Inference: score = sigmoid(cls), then
    ATSSRetinaNet's post-processing. From YAML: ``MODEL.EFL.LOSS`` "EFL" (or "EQFL") gives
    EQFL, "focal" (or "QFL") QFL with beta = ``MODEL.RETINANET.FOCAL_LOSS_GAMMA``.
    """

    head_class = QualityHead
    quality_targets = True

    def score(self, cls_logits: torch.Tensor, *branches: torch.Tensor) -> torch.Tensor:
        """sigmoid(cls): the class score is the quality."""
        return cls_logits.sigmoid()

    def classification_quality(self, iou_target: torch.Tensor) -> Optional[torch.Tensor]:
        """The IoU target itself."""
        return iou_target
