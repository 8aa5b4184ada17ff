"""The EFL authors' improved one-stage detector: RetinaNet with ATSS assignment, GroupNorm
head towers, an IoU branch, GIoU box loss and IoU-weighted scores (their "improved
baseline"; Li et al. 2022, built on Zhang et al., "Bridging the Gap Between Anchor-based
and Anchor-free Detection via Adaptive Training Sample Selection", CVPR 2020).

Classification uses the model's ``cls_loss`` module (:class:`EqualizedFocalLoss`, or
:class:`efl.focal_losses.SigmoidFocalLoss` for the focal-loss baseline), so the baseline
and EFL run the same code and differ in that module alone.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..compat import head_norm
from ..config import cls_loss_from_config
from ..losses import DenseClassificationLoss, GradientStatisticsLoss
from .authors_statistics import AuthorsStatistics
from .retinanet import check_cls_loss, foreground_one_hot

__all__ = [
    "ATSSAssigner",
    "ATSSHead",
    "ATSSRetinaNet",
    "box_iou_and_giou",
    "clip_like_authors",
]


class ATSSAssigner:
    """Adaptive Training Sample Selection, as the EFL authors configure it.

    For each ground-truth box: on every level, the ``topk`` anchors whose centres are
    closest to the box centre (clamped to the image) are candidates; a candidate is
    positive if its IoU with the box is >= mean + std (unbiased) of the candidates' IoUs
    and its centre lies inside the box (by more than 0.01 px). An anchor positive for
    several boxes goes to the one it overlaps most. ``topk`` counts anchors, not
    locations (18 = 9 locations x 2 anchors in the authors' recipe).

    It stands where :class:`RetinaNet` keeps its IoU ``Matcher`` (``anchor_matcher``).
    """

    def __init__(self, topk: int = 18):
        if not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be a positive int; got topk={topk!r}")
        self.topk = topk

    def __repr__(self):
        return f"ATSSAssigner(topk={self.topk})"

    @torch.no_grad()
    def __call__(
        self, anchors: List[Boxes], gt_boxes: Boxes, image_size: Optional[Tuple[int, int]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            anchors: one ``Boxes`` per level, (R_l, 4) XYXY; R = sum R_l.
            gt_boxes: (G, 4) ground-truth boxes of the image.
            image_size: (height, width); box centres are clamped to it.
        Returns:
            matched_idxs: (R,) int64, the box each anchor is assigned to (0 where none).
            is_positive: (R,) bool.
        """
        num_per_level = [len(a) for a in anchors]
        anchors = Boxes.cat(anchors)
        num_anchors, num_gt = len(anchors), len(gt_boxes)
        device = anchors.tensor.device
        if num_gt == 0:
            return (torch.zeros(num_anchors, dtype=torch.int64, device=device),
                    torch.zeros(num_anchors, dtype=torch.bool, device=device))
        gt = gt_boxes.tensor
        ious = pairwise_iou(anchors, gt_boxes)  # (R, G)
        anchor_centres = anchors.get_centers()  # (R, 2)
        gt_centres = gt_boxes.get_centers()
        if image_size is not None:
            height, width = image_size
            gt_centres = torch.stack(
                [gt_centres[:, 0].clamp(0, width), gt_centres[:, 1].clamp(0, height)], dim=1
            )
        distances = (anchor_centres[:, None, :] - gt_centres[None, :, :]).pow(2).sum(-1)

        candidates, start = [], 0
        for n in num_per_level:
            k = min(self.topk, n)
            nearest = distances[start : start + n].topk(k, dim=0, largest=False).indices
            candidates.append(nearest + start)
            start += n
        candidates = torch.cat(candidates)  # (C, G) anchor indices
        candidate_ious = ious.gather(0, candidates)
        threshold = candidate_ious.mean(0) + candidate_ious.std(0).nan_to_num(0.0)
        is_pos = candidate_ious >= threshold

        cx, cy = anchor_centres[candidates, 0], anchor_centres[candidates, 1]  # (C, G)
        margins = torch.stack([cx - gt[:, 0], cy - gt[:, 1], gt[:, 2] - cx, gt[:, 3] - cy])
        is_pos &= margins.amin(dim=0) > 0.01

        gt_index = torch.arange(num_gt, device=device).expand_as(candidates)
        assigned = torch.full_like(ious, -1.0)  # IoU where assigned, else -1
        rows, cols = candidates[is_pos], gt_index[is_pos]
        assigned[rows, cols] = ious[rows, cols]
        best, matched_idxs = assigned.max(dim=1)
        return matched_idxs, best >= 0


class ATSSHead(RetinaNetHead):
    """:class:`RetinaNetHead` (cls and box towers, GroupNorm by default) plus an IoU branch:
    a 3x3 conv on the box tower predicting, per anchor, the logit of the IoU between the
    decoded box and its ground truth (when the class attribute ``iou_branch`` is True)."""

    iou_branch = True

    @configurable
    def __init__(self, *, input_shape: List[ShapeSpec], num_classes, num_anchors, conv_dims,
                 norm="GN", prior_prob=0.001):
        """Arguments as :class:`RetinaNetHead`; ``norm`` defaults to GroupNorm(32)."""
        super().__init__(input_shape=input_shape, num_classes=num_classes,
                         num_anchors=num_anchors, conv_dims=conv_dims, norm=head_norm(norm),
                         prior_prob=prior_prob)
        self.iou_pred = nn.Conv2d(conv_dims[-1], num_anchors, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.iou_pred.weight, mean=0, std=0.01)
        nn.init.constant_(self.iou_pred.bias, 0)
        if not self.iou_branch:  # initialised all the same: twins draw the same weights
            self.iou_pred = None

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        ret["norm"] = cfg.MODEL.ATSS.HEAD_NORM
        return ret

    def forward(self, features: List[torch.Tensor]):
        """
        Returns:
            logits, bbox_reg[, iou]: per level, (N, A*K, Hi, Wi), (N, A*4, Hi, Wi) and
            (N, A, Hi, Wi) (without the IoU branch: the first two only).
        """
        logits, bbox_reg, iou = [], [], []
        for feature in features:
            box_feature = self.bbox_subnet(feature)
            logits.append(self.cls_score(self.cls_subnet(feature)))
            bbox_reg.append(self.bbox_pred(box_feature))
            if self.iou_pred is not None:
                iou.append(self.iou_pred(box_feature))
        return (logits, bbox_reg, iou) if self.iou_pred is not None else (logits, bbox_reg)


def box_iou_and_giou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7):
    """IoU and generalised IoU of matched (P, 4) XYXY boxes; each (P,).

    Unlike fvcore's ``giou_loss`` this does not assert on the boxes, so a diverging run
    reaches the trainer's NaN check (and its clear message) instead of an AssertionError.
    """
    lt = torch.max(boxes1[:, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(dim=1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(dim=1)
    union = area1 + area2 - inter
    iou = inter / (union + eps)
    enclosing = (torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2]))
    enclosing = enclosing.clamp(min=0).prod(dim=1)
    return iou, iou - (enclosing - union) / (enclosing + eps)


def _mean_over_workers(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over all processes and divided by their number."""
    world = comm.get_world_size()
    if world > 1:
        values = values.clone()
        dist.all_reduce(values)
        values = values / world
    return values


@META_ARCH_REGISTRY.register()
class ATSSRetinaNet(RetinaNet):
    """The EFL authors' improved one-stage detector.

    A :class:`RetinaNet` with an :class:`ATSSHead`, an :class:`ATSSAssigner` as
    ``anchor_matcher`` and these losses (N = positive anchors summed over all workers /
    world size, at least 1):

    - ``loss_cls``: the ``cls_loss`` module (EFL, or focal loss for the baseline) over all
      anchors against the one-hot targets (and :meth:`classification_quality`), / N;
    - ``loss_box_reg``: (1 - GIoU) of each positive's decoded box, weighted by its IoU
      target, / (sum of IoU targets over all workers / world size);
    - ``loss_iou`` (with the head's IoU branch): sigmoid cross-entropy of the IoU branch to
      the IoU target, / N; the IoU target is the IoU of the decoded (detached) box with its
      ground truth.

    Inference scores every anchor and class by :meth:`score` (sigmoid(cls) *
    sigmoid(iou)), then post-processes as the authors do (:meth:`inference_single_image`),
    with RetinaNet's ``test_score_thresh``, ``test_topk_candidates``, ``test_nms_thresh``
    and ``max_detections_per_image``.

    A variant changes the seams: ``head_class`` (the YAML head), :meth:`score`,
    :meth:`classification_quality` with ``quality_targets`` (e.g. QualityATSSRetinaNet),
    :meth:`delta_losses` and :meth:`clip_boxes` (e.g. YOLOXIP).
    """

    head_class = ATSSHead  # the head from_config builds
    quality_targets = False  # whether classification_quality gives the loss soft targets

    @configurable
    def __init__(self, *, cls_loss: DenseClassificationLoss, efl_statistics: str = "paper",
                 **kwargs):
        """
        Args:
            cls_loss: the classification loss module (its ``num_classes`` must equal the
                model's; it needs quality targets iff ``quality_targets``).
            efl_statistics: "paper" (default): EFL's gradient statistics per class, as the
                paper defines them; "authors": as the authors' code accumulates them, which
                mixes classes when there are several anchors per location
                (:mod:`efl.modeling.authors_statistics`, given to the loss as its statistics
                reader; for reproduction studies only; no effect on a loss without state).
            kwargs: everything :class:`RetinaNet` takes; ``head`` must return the IoU
                branch too for ``loss_iou`` and the IoU-weighted score (as
                :class:`ATSSHead`), ``anchor_matcher`` must be an :class:`ATSSAssigner`.
        """
        kwargs.setdefault("box_reg_loss_type", "giou")
        super().__init__(**kwargs)
        if not isinstance(self.anchor_matcher, ATSSAssigner):
            raise ValueError(
                f"{type(self).__name__} needs anchor_matcher=ATSSAssigner(topk); got "
                f"{type(self.anchor_matcher).__name__}"
            )
        check_cls_loss(cls_loss, self.num_classes, self.quality_targets, type(self).__name__)
        if efl_statistics not in ("paper", "authors"):
            raise ValueError(f"efl_statistics must be 'paper' or 'authors'; got {efl_statistics!r}")
        self.cls_loss = cls_loss
        self.efl_statistics = efl_statistics
        if efl_statistics == "authors" and isinstance(cls_loss, GradientStatisticsLoss):
            cls_loss.read_statistics_with(AuthorsStatistics(self.anchor_generator.num_cell_anchors[0]))

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)  # its RetinaNetHead and Matcher are replaced below
        shapes = ret["backbone"].output_shape()
        ret["head"] = cls.head_class(cfg, [shapes[f] for f in ret["head_in_features"]])
        ret["anchor_matcher"] = ATSSAssigner(cfg.MODEL.ATSS.TOPK)
        ret["cls_loss"] = cls_loss_from_config(
            cfg, ret["num_classes"], ret["focal_loss_alpha"], ret["focal_loss_gamma"],
            quality=cls.quality_targets,
        )
        ret["efl_statistics"] = cfg.MODEL.ATSS.EFL_STATISTICS
        ret.pop("box_reg_loss_type")  # the box loss is GIoU (set in __init__)
        return ret

    # ----- the seams of a variant --------------------------------------------------------
    def score(self, cls_logits: torch.Tensor, *branches: torch.Tensor) -> torch.Tensor:
        """(R_l, K) score of one image's level from its (R_l, K) class logits and the
        head's further per-anchor branches (here the (R_l, 1) IoU logits): sigmoid(cls) *
        sigmoid(iou)."""
        (iou_logits,) = branches
        return cls_logits.sigmoid() * iou_logits.sigmoid()

    def classification_quality(self, iou_target: torch.Tensor) -> Optional[torch.Tensor]:
        """The soft classification target of each positive anchor, (P,) in [0, 1], from
        the IoU of its decoded (detached) box with its ground truth; None: the hard one-hot
        target (here)."""
        return None

    def delta_losses(self, deltas: torch.Tensor, anchors: torch.Tensor,
                     gt_boxes: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Further box losses on the positives' raw (P, 4) predicted deltas, with their
        (P, 4) anchors and ground-truth boxes (XYXY); none here."""
        return {}

    def clip_boxes(self, boxes: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
        """(R, 4) decoded XYXY boxes clipped to the image: :func:`clip_like_authors`."""
        return clip_like_authors(boxes, image_size)

    # ----- training and inference ----------------------------------------------------------
    def _split_predictions(self, predictions):
        """The head's outputs per level as (N, R_l, K), (N, R_l, 4) and, per further branch
        (the IoU branch), (N, R_l, 1)."""
        dims = [self.num_classes, 4] + [1] * (len(predictions) - 2)
        return self._transpose_dense_predictions(predictions, dims)

    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_deltas, *branches = self._split_predictions(predictions)
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, *branches)

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """
        Returns:
            gt_labels: per image, (R,) int64 class of each anchor (``num_classes``:
                background).
            matched_gt_boxes: per image, (R, 4) the assigned box (zeros for background).
        """
        num_anchors = sum(len(a) for a in anchors)
        gt_labels, matched_gt_boxes = [], []
        for gt in gt_instances:
            matched, is_pos = self.anchor_matcher(anchors, gt.gt_boxes, gt.image_size)
            if len(gt) > 0:
                labels = gt.gt_classes[matched].clone()
                labels[~is_pos] = self.num_classes
                boxes = gt.gt_boxes.tensor[matched]
            else:
                device = anchors[0].tensor.device
                labels = torch.full((num_anchors,), self.num_classes, dtype=torch.int64, device=device)
                boxes = torch.zeros(num_anchors, 4, device=device)
            gt_labels.append(labels)
            matched_gt_boxes.append(boxes)
        return gt_labels, matched_gt_boxes

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
               pred_ious: Optional[List[torch.Tensor]] = None):
        """
        Args:
            anchors: per level ``Boxes`` (R_l, 4).
            pred_logits, pred_anchor_deltas, pred_ious: per level, (N, R_l, K), (N, R_l, 4)
                and (N, R_l, 1) (None without the IoU branch).
            gt_labels, gt_boxes: per image, from :meth:`label_anchors`.
        Returns:
            dict with ``loss_cls``, ``loss_box_reg`` and (with ``pred_ious``) ``loss_iou``
            (0-dim, float32).
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos = pos_mask.sum()

        deltas = cat(pred_anchor_deltas, dim=1)[pos_mask].float()  # (P, 4)
        pos_anchors = Boxes.cat(anchors).tensor.expand(num_images, -1, -1)[pos_mask]
        pred_boxes = self.box2box_transform.apply_deltas(deltas, pos_anchors)
        pos_gt_boxes = torch.stack(gt_boxes)[pos_mask].float()
        iou, giou = box_iou_and_giou(pred_boxes, pos_gt_boxes)
        iou_target = iou.detach()

        totals = _mean_over_workers(torch.stack([num_pos.float(), iou_target.sum()]))
        normalizer = totals[0].clamp(min=1.0)
        iou_normalizer = totals[1].clamp(min=1e-6)
        get_event_storage().put_scalar("num_pos_anchors", num_pos.item() / num_images)

        logits = cat(pred_logits, dim=1).reshape(-1, self.num_classes)
        targets = foreground_one_hot(gt_labels.reshape(-1), self.num_classes)
        quality = self.classification_quality(iou_target)
        if quality is not None:  # (P,) of the positives -> (N * R,), 0 on the others
            soft = logits.new_zeros(logits.shape[0], dtype=torch.float32)
            soft[pos_mask.reshape(-1)] = quality
            quality = soft
        out = {
            "loss_cls": self.cls_loss(logits, targets, normalizer, quality=quality),
            "loss_box_reg": ((1 - giou) * iou_target).sum() / iou_normalizer,
        }
        if pred_ious is not None:
            iou_logits = cat(pred_ious, dim=1)[pos_mask].squeeze(-1).float()
            loss_iou = F.binary_cross_entropy_with_logits(iou_logits, iou_target, reduction="sum")
            out["loss_iou"] = loss_iou / normalizer
        out.update(self.delta_losses(deltas, pos_anchors, pos_gt_boxes))
        return out

    def forward_inference(self, images, features, predictions):
        pred_logits, pred_deltas, *branches = self._split_predictions(predictions)
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for i, image_size in enumerate(images.image_sizes):
            scores = [self.score(c[i], *(b[i] for b in bs))
                      for c, *bs in zip(pred_logits, *branches)]
            deltas = [d[i] for d in pred_deltas]
            results.append(self.inference_single_image(anchors, scores, deltas, image_size))
        return results

    def inference_single_image(self, anchors: List[Boxes], box_cls: List[torch.Tensor],
                               box_delta: List[torch.Tensor], image_size: Tuple[int, int]):
        """The authors' post-processing (their ``base_multicls`` predictor and
        ``retina_multicls`` merger, ``up/tasks/det/models/postprocess/roi_predictor.py``
        187-266 and 370-410), which differs from :class:`RetinaNet`'s in order and count:

        per level, every anchor's box is decoded, anchors with a non-finite box or score
        dropped (a diverged model gives no finite box; theirs would clip inf to the image
        corner), the boxes clipped (:meth:`clip_boxes`), zero-size boxes dropped, then the top ``min(test_topk_candidates, number of
        anchors left)`` (anchors, not anchor x class pairs) of the anchor x class scores are
        kept, filtered by ``scores > test_score_thresh`` only if that is > 0 (theirs is 0:
        no filter); no per-level NMS and no per-level cut after it (their
        ``post_nms_top_n`` is not used by this predictor); then one class-wise NMS at
        ``test_nms_thresh`` over all levels and the ``max_detections_per_image`` best.

        Args:
            anchors: per level ``Boxes`` (R_l, 4); box_cls: per level (R_l, K) scores
                (sigmoid(cls) * sigmoid(iou)); box_delta: per level (R_l, 4).
        Returns:
            ``Instances`` with ``pred_boxes``, ``scores``, ``pred_classes``, by score.
        """
        boxes_all, scores_all, classes_all = [], [], []
        for anchors_l, scores_l, deltas_l in zip(anchors, box_cls, box_delta):
            boxes = self.box2box_transform.apply_deltas(deltas_l, anchors_l.tensor)
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores_l).all(dim=1)
            boxes = self.clip_boxes(boxes[finite], image_size)
            scores_l = scores_l[finite]
            nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores_l = boxes[nonempty], scores_l[nonempty]
            num_boxes = boxes.shape[0]
            if isinstance(num_boxes, torch.Tensor):  # tracing
                num_topk = torch.clamp(num_boxes, max=self.test_topk_candidates)
            else:
                num_topk = min(num_boxes, self.test_topk_candidates)
            scores, flat_idxs = scores_l.flatten().topk(num_topk)
            if self.test_score_thresh > 0:
                above = scores > self.test_score_thresh
                scores, flat_idxs = scores[above], flat_idxs[above]
            num_classes = scores_l.shape[1]
            boxes_all.append(boxes[flat_idxs // num_classes])
            scores_all.append(scores)
            classes_all.append(flat_idxs % num_classes)
        boxes, scores, classes = cat(boxes_all), cat(scores_all), cat(classes_all)
        keep = batched_nms(boxes, scores, classes, self.test_nms_thresh)
        keep = keep[: self.max_detections_per_image]
        result = Instances(image_size)
        result.pred_boxes = Boxes(boxes[keep])
        result.scores = scores[keep]
        result.pred_classes = classes[keep]
        return result


def clip_like_authors(boxes: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """(R, 4) XYXY boxes clipped as the authors clip them (``clip_bbox`` in their
    inclusive-pixel convention, x2 = right edge - 1): x1 to [0, W - 1], x2 to [1, W], y
    likewise. Differs from ``Boxes.clip`` only for boxes lying entirely outside the image,
    which keep a 1-pixel extent at its border instead of none."""
    height, width = image_size
    x1 = boxes[:, 0].clamp(min=0, max=width - 1)
    y1 = boxes[:, 1].clamp(min=0, max=height - 1)
    x2 = boxes[:, 2].clamp(min=1, max=width)
    y2 = boxes[:, 3].clamp(min=1, max=height)
    return torch.stack((x1, y1, x2, y2), dim=-1)

