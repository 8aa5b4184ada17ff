"""YOLOX-IP: the EFL authors' YOLOX backbone, neck and decoupled head trained and decoded by
the ATSS + IoU-branch path of their improved detector (United-Perception 52aaeb9,
``configs/det/efl/{efl,eqfl}_yolox_{small,medium}.yaml``: ``retina_post_iou``; no SimOTA,
no objectness loss). :class:`ATSSRetinaNet` with two of its seams changed."""

from typing import Dict, Optional, Tuple

import torch

from detectron2.modeling import META_ARCH_REGISTRY

from ..atss import ATSSRetinaNet
from .head import YOLOXHead

__all__ = ["YOLOXIP", "QualityYOLOXIP"]


@META_ARCH_REGISTRY.register()
class YOLOXIP(ATSSRetinaNet):
    """:class:`ATSSRetinaNet` (ATSS assignment, ``cls_loss``, GIoU weighted by the IoU
    target, IoU-branch BCE, score sigmoid(cls) x sigmoid(iou), the authors' post-processing)
    with a :class:`YOLOXHead` (for YAML) and:

    - ``loss_box_l1``: L1 between the positives' raw predicted deltas and their targets'
      deltas to the anchor, averaged over the P x 4 entries of this process (their
      ``l1_loss`` in ``compose_loc_loss``, reduction "mean" and no normaliser passed to
      it); 0 without positives. Their ``loc_loss`` is ``loss_box_reg + loss_box_l1``.
    - boxes clipped to [0, W] x [0, H] (their ``clip_bbox`` under ``runtime.aligned:
      true``, pixel offset 0), not :func:`clip_like_authors` (offset 1).

    The recipe's other settings are the config's (configs/common/models/yolox_ip.py):
    anchors {3, 4} x stride at offset 0, ATSS top 18, pre-NMS top 1000, NMS 0.65, 300
    detections, BGR 0-255 input without mean/std, padding to 32 at the bottom-right (the
    image at the top-left).
    """

    head_class = YOLOXHead

    def delta_losses(self, deltas: torch.Tensor, anchors: torch.Tensor,
                     gt_boxes: torch.Tensor) -> Dict[str, torch.Tensor]:
        """{"loss_box_l1": mean |deltas - target deltas|} over the (P, 4) entries."""
        if deltas.numel() == 0:
            return {"loss_box_l1": deltas.sum()}
        target = self.box2box_transform.get_deltas(anchors, gt_boxes)
        return {"loss_box_l1": (deltas - target).abs().mean()}

    def clip_boxes(self, boxes: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
        """(R, 4) XYXY clipped to [0, W] x [0, H]."""
        height, width = image_size
        x1, y1, x2, y2 = boxes.unbind(dim=1)
        return torch.stack((x1.clamp(0, width), y1.clamp(0, height),
                            x2.clamp(0, width), y2.clamp(0, height)), dim=1)


@META_ARCH_REGISTRY.register()
class QualityYOLOXIP(YOLOXIP):
    """:class:`YOLOXIP` for a quality loss (QFL, EQFL: their eqfl_yolox_{samll,medium}.yaml,
    ``retina_post_iou`` with ``equalized_quality_focal_loss``): the target of each
    positive's class entry is the IoU of its decoded (detached) box with its ground truth;
    the IoU branch, its loss and the score sigmoid(cls) x sigmoid(iou) stay (unlike
    :class:`QualityATSSRetinaNet`, which drops the branch). From YAML: ``MODEL.EFL.LOSS``
    "EFL" (or "EQFL") gives EQFL."""

    quality_targets = True

    def classification_quality(self, iou_target: torch.Tensor) -> Optional[torch.Tensor]:
        """The IoU target itself."""
        return iou_target
