"""The YOLOX-IP recipe's training augmentations, as the EFL authors' configs/det/efl/
{efl,eqfl}_yolox_{small,medium}.yaml chain them (United-Perception 52aaeb9; docs/yolox-ip.md):

    mosaic -> random affine ("random perspective", no perspective) -> mixup -> HSV -> flip
    -> random multi-scale resize (longer side to a random multiple of 32, padded square)

and, for the last 15 of 300 epochs (their ``yolox_noaug`` hook), HSV -> flip -> resize only.
:class:`YOLOXTrainMapper` is the Detectron2 mapper (dataset dict -> model input) running
the chain; the transforms below are plain functions of numpy arrays:

- image: (H, W, 3) uint8, BGR 0-255;
- boxes: (N, 4) float64, XYXY in pixels (Detectron2's XYXY_ABS, offset 0: their
  ``aligned: true``); classes: (N,) int64;
- ``rng``: a ``numpy.random.Generator``, the only source of randomness.
"""

import math
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

import detectron2.data.transforms as T
from detectron2.data import detection_utils as utils
from detectron2.structures import Boxes, BoxMode, Instances

from ..errors import InputError

__all__ = [
    "YOLOXAugParams",
    "yolox_aug_params",
    "mosaic",
    "random_affine",
    "mixup",
    "augment_hsv",
    "hflip",
    "random_square_resize",
    "LongestSideResize",
    "YOLOXTrainMapper",
]

Sample = Tuple[np.ndarray, np.ndarray, np.ndarray]  # image, boxes, classes


@dataclass(frozen=True)
class YOLOXAugParams:
    """Their transform parameters (yaml keys in the comments); sizes in pixels."""

    input_size: int = 640  # mosaic tar_size, mixup input_size, test max_size
    degrees: float = 10.0  # random_perspective_yolox: degrees
    translate: float = 0.1  # translate
    scale: Tuple[float, float] = (0.1, 2.0)  # scale
    shear: float = 2.0  # shear (degrees)
    mixup_scale: Tuple[float, float] = (0.8, 1.6)  # yolox_mixup_cv2: mixup_scale
    hsv_gains: Tuple[float, float, float] = (0.015, 0.7, 0.4)  # augment_hsv: h/s/vgain
    flip_prob: float = 0.5  # flip: flip_p
    random_size: Tuple[int, int] = (15, 25)  # keep_ar_resize_max: random_size (inclusive)
    scale_step: int = 32  # keep_ar_resize_max: scale_step
    fill: int = 0  # fill_color / padding_val

    def at_input_size(self, input_size: int) -> "YOLOXAugParams":
        """The same recipe scaled to ``input_size`` (the step of the multi-scale sizes
        scales with it, e.g. 16 at 320 px: sizes 240..400)."""
        step = self.scale_step * input_size / self.input_size
        if step != int(step) or step < 1:
            raise InputError(
                f"YOLOX augmentations: input_size={input_size} gives a multi-scale step of "
                f"{step:g} px ({self.scale_step} x {input_size} / {self.input_size}); expected an "
                f"input size that makes it a whole number, e.g. 640, 320 or 160."
            )
        return replace(self, input_size=int(input_size), scale_step=int(step))


# S and M: the same data recipe. The only textual difference in the yaml files, M's
# `train_resize: max_size: 640` (S omits it and names `scale_step: 32`, M's default), has no
# effect: keep_ar_resize_max ignores max_size when random_size is given.
_RECIPES = {"s": YOLOXAugParams(), "m": YOLOXAugParams()}


def yolox_aug_params(size: str, input_size: Optional[int] = None) -> YOLOXAugParams:
    """The recipe of YOLOX-IP ``size`` ("s" or "m"), optionally scaled to ``input_size``."""
    if size not in _RECIPES:
        raise InputError(
            f"YOLOX augmentations: unknown model size {size!r}; expected one of "
            f"{sorted(_RECIPES)} (YOLOX-IP-S, YOLOX-IP-M of the EFL authors' configs)."
        )
    params = _RECIPES[size]
    return params if input_size is None else params.at_input_size(input_size)


# ----- transforms -------------------------------------------------------------------------
def _fit(image: np.ndarray, boxes: np.ndarray, size: int):
    """Resize so the image fits in size x size, keeping the aspect ratio (their mosaic's
    ``resize_img``); boxes by the realised ratios."""
    h0, w0 = image.shape[:2]
    r = min(size / h0, size / w0)
    if r != 1:
        image = cv2.resize(image, (int(w0 * r), int(h0 * r)), interpolation=cv2.INTER_LINEAR)
    h1, w1 = image.shape[:2]
    return image, boxes * np.array([w1 / w0, h1 / h0, w1 / w0, h1 / h0])


def _candidates(before: np.ndarray, after: np.ndarray, wh_thr: float, ar_thr=20.0, area_thr=0.2):
    """Boxes kept after a geometric transform (their ``box_candidates``): wider and taller
    than wh_thr px, at least area_thr of the area before, aspect ratio below ar_thr."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + 1e-16) > area_thr) & (ar < ar_thr)


def mosaic(samples: Sequence[Sample], size: int, rng: np.random.Generator, fill: int = 0) -> Sample:
    """Four samples, each fitted into size x size, around a random centre of a 2size x 2size
    canvas (top-left, top-right, bottom-left, bottom-right); boxes clipped to the canvas
    (their ``mosaic``: tar_size, fill_color)."""
    if len(samples) != 4:
        raise ValueError(f"mosaic takes 4 samples, got {len(samples)}")
    s2 = 2 * size
    border = (-size) // 2
    yc, xc = (int(rng.uniform(-border, s2 + border)) for _ in range(2))
    canvas = np.full((s2, s2, 3), fill, dtype=np.uint8)
    all_boxes, all_classes = [], []
    for i, (image, boxes, classes) in enumerate(samples):
        image, boxes = _fit(image, boxes, size)
        h, w = image.shape[:2]
        if i == 0:
            xa, ya, xb, yb = max(xc - w, 0), max(yc - h, 0), xc, yc
        elif i == 1:
            xa, ya, xb, yb = xc, max(yc - h, 0), min(xc + w, s2), yc
        elif i == 2:
            xa, ya, xb, yb = max(xc - w, 0), yc, xc, min(s2, yc + h)
        else:
            xa, ya, xb, yb = xc, yc, min(xc + w, s2), min(s2, yc + h)
        # the part of the image that lands there: right/bottom-aligned for the left/top tiles
        sx = w - (xb - xa) if i in (0, 2) else 0
        sy = h - (yb - ya) if i in (0, 1) else 0
        canvas[ya:yb, xa:xb] = image[sy:sy + (yb - ya), sx:sx + (xb - xa)]
        boxes = boxes + np.array([xa - sx, ya - sy, xa - sx, ya - sy])
        all_boxes.append(np.clip(boxes, 0, s2))
        all_classes.append(classes)
    return canvas, np.concatenate(all_boxes).reshape(-1, 4), np.concatenate(all_classes)


def _affine_matrix(in_hw, out_hw, rng, degrees, translate, scale, shear):
    """3 x 3: centre, rotate + scale, shear, translate (their generate_trans_matrix)."""
    C = np.eye(3)
    C[0, 2], C[1, 2] = -in_hw[1] / 2, -in_hw[0] / 2
    R = np.eye(3)
    a = rng.uniform(-degrees, degrees)
    s = rng.uniform(scale[0], scale[1])
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    Tr = np.eye(3)
    Tr[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[1]
    Tr[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[0]
    return Tr @ S @ R @ C, s


def random_affine(sample: Sample, rng: np.random.Generator, params: YOLOXAugParams,
                  border: Optional[int] = None) -> Sample:
    """Rotate (+-degrees), scale (U(scale)), shear (+-shear deg) about the image centre and
    translate the centre to U(0.5 +- translate) of the output, whose sides are the input's
    + 2 border (their ``border: [-320, -320]`` on the 1280 px mosaic: 640 px out); boxes:
    the bounding box of the 4 warped corners, clipped, kept by the candidate rule (wider and
    taller than 2 px, >= 20% of the scaled area, aspect < 20)."""
    image, boxes, classes = sample
    border = -(params.input_size // 2) if border is None else border
    out_hw = (image.shape[0] + 2 * border, image.shape[1] + 2 * border)
    M, s = _affine_matrix(image.shape[:2], out_hw, rng, params.degrees, params.translate,
                          params.scale, params.shear)
    image = cv2.warpAffine(image, M[:2], dsize=(out_hw[1], out_hw[0]),
                           borderValue=(params.fill,) * 3)
    n = len(boxes)
    if n == 0:
        return image, boxes, classes
    corners = np.ones((n * 4, 3))
    corners[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)
    xy = (corners @ M.T)[:, :2].reshape(n, 8)
    x, y = xy[:, 0::2], xy[:, 1::2]
    new = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], axis=1)
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, out_hw[1])
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, out_hw[0])
    keep = _candidates(boxes * s, new, wh_thr=2)
    return image, new[keep], classes[keep]


def mixup(sample: Sample, other: Sample, rng: np.random.Generator,
          params: YOLOXAugParams) -> Sample:
    """Blend 50/50 with ``other`` (their ``yolox_mixup_cv2``): ``other`` fitted into an
    input_size square, scaled by U(mixup_scale), zero-padded to at least this image's size,
    cropped at a random offset to it; its boxes kept if wider and taller than 5 px and >= 20%
    of their area before the crop. Without such a box the sample is returned unchanged.
    (Their flip of ``other`` never happens: flip_prob 1 and ``uniform(0, 1) > 1``.)"""
    image, boxes, classes = sample
    o_image, o_boxes, o_classes = other
    size = params.input_size
    jitter = rng.uniform(*params.mixup_scale)
    canvas = np.full((size, size, 3), params.fill, dtype=np.uint8)
    r = min(size / o_image.shape[0], size / o_image.shape[1])
    h, w = int(o_image.shape[0] * r), int(o_image.shape[1] * r)
    canvas[:h, :w] = cv2.resize(o_image, (w, h), interpolation=cv2.INTER_LINEAR)
    canvas = cv2.resize(canvas, (int(size * jitter), int(size * jitter)))
    r *= jitter
    ch, cw = canvas.shape[:2]
    th, tw = image.shape[:2]
    padded = np.zeros((max(ch, th), max(cw, tw), 3), dtype=np.uint8)
    padded[:ch, :cw] = canvas
    # their random.randint(0, extra - 1): an offset in [0, extra - 1]
    dy = int(rng.integers(0, padded.shape[0] - th)) if padded.shape[0] > th else 0
    dx = int(rng.integers(0, padded.shape[1] - tw)) if padded.shape[1] > tw else 0
    crop = padded[dy:dy + th, dx:dx + tw]
    before = o_boxes * r
    before[:, 0::2] = before[:, 0::2].clip(0, cw)
    before[:, 1::2] = before[:, 1::2].clip(0, ch)
    after = before - np.array([dx, dy, dx, dy])
    after[:, 0::2] = after[:, 0::2].clip(0, tw)
    after[:, 1::2] = after[:, 1::2].clip(0, th)
    keep = _candidates(before, after, wh_thr=5)
    if not keep.any():
        return sample
    blended = (0.5 * image.astype(np.float32) + 0.5 * crop.astype(np.float32)).astype(np.uint8)
    return (blended, np.concatenate([boxes.reshape(-1, 4), after[keep]]),
            np.concatenate([classes, o_classes[keep]]))


def augment_hsv(image: np.ndarray, rng: np.random.Generator, gains: Sequence[float]) -> np.ndarray:
    """Hue, saturation and value multiplied by U(1 +- gain) each, through OpenCV's 8-bit
    HSV (hue mod 180, saturation and value clipped at 255); boxes do not change."""
    r = rng.uniform(-1, 1, 3) * np.asarray(gains) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.int16)
    luts = ((x * r[0]) % 180, np.clip(x * r[1], 0, 255), np.clip(x * r[2], 0, 255))
    hsv = cv2.merge([cv2.LUT(c, lut.astype(np.uint8)) for c, lut in zip((hue, sat, val), luts)])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def hflip(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, prob: float):
    """Mirror left-right with probability ``prob``: x -> W - x (offset 0)."""
    if rng.random() >= prob:
        return image, boxes
    width = image.shape[1]
    return image[:, ::-1].copy(), np.stack(
        [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)


def random_square_resize(sample: Sample, rng: np.random.Generator,
                         params: YOLOXAugParams) -> Sample:
    """Longer side to a random multiple of scale_step in random_size (both ends included:
    480..800 px at 640), the image at the top-left of a square of that side (their
    ``keep_ar_resize_max`` with ``padding_type: left_top``); boxes wider and taller than
    1 px kept (its ``min_size``)."""
    image, boxes, classes = sample
    side = int(rng.integers(params.random_size[0], params.random_size[1] + 1)) * params.scale_step
    factor = side / max(image.shape[:2])
    image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    square = np.full((side, side, 3), params.fill, dtype=np.uint8)
    square[:image.shape[0], :image.shape[1]] = image[:side, :side]
    boxes = boxes * factor
    keep = ((boxes[:, 2] - boxes[:, 0]) > 1) & ((boxes[:, 3] - boxes[:, 1]) > 1)
    return square, boxes[keep], classes[keep]


class _CV2Resize(T.Transform):
    """Resize by OpenCV (bilinear), as their image reader and resize do."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        return cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)

    def apply_coords(self, coords):
        coords[:, 0] = coords[:, 0] * (self.new_w / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h / self.h)
        return coords


class LongestSideResize(T.Augmentation):
    """Test resize: the longer side to ``max_size`` (up or down), aspect kept (their
    ``test_resize``: keep_ar_resize_max, max_size 640). Their square padding is left to
    Detectron2's batch padding to a multiple of 32."""

    def __init__(self, max_size: int):
        super().__init__()
        self.max_size = int(max_size)

    def get_transform(self, image):
        h, w = image.shape[:2]
        factor = self.max_size / max(h, w)
        return _CV2Resize(h, w, int(round(h * factor)), int(round(w * factor)))


# ----- the mapper ---------------------------------------------------------------------------
class YOLOXTrainMapper:
    """Detectron2 training mapper (dataset dict -> {"image": (3, H, W) uint8 BGR tensor,
    "instances": gt_boxes XYXY_ABS, gt_classes, ...}) running the YOLOX-IP chain.

    Mosaic and mixup draw their other images uniformly from the training dataset dicts:
    :func:`efl.data.build_train_loader` hands them over (``bind_dataset``) and calls the
    mapper with the iteration of the batch, computed in whichever process maps it; from
    ``no_aug_from_iter`` on, mosaic, affine and mixup are off (their ``yolox_noaug`` hook,
    which rebuilds the loader at epoch 285 of 300). Randomness: one generator per image,
    seeded from numpy's global generator, which that loader seeds per (seed, iteration,
    image): the same seed gives the same images whatever the number of workers.

    Args:
        size: "s" or "m" (their parameters: :func:`yolox_aug_params`).
        input_size: scale of the recipe (640 theirs; 320 the CPU configs).
        no_aug_from_iter: first iteration without mosaic / affine / mixup; None: never.
        dataset: the dataset dicts, when the loader does not bind them (e.g. Detectron2's
            ``build_detection_train_loader``, which gives no iteration: strong always).
    """

    takes_iteration = True

    def __init__(self, size: str = "s", *, input_size: Optional[int] = None,
                 no_aug_from_iter: Optional[int] = None, image_format: str = "BGR",
                 dataset: Optional[Sequence[dict]] = None):
        self.params = yolox_aug_params(size, input_size)
        if image_format != "BGR":
            raise InputError(f"YOLOXTrainMapper: image_format={image_format!r}; the YOLOX-IP "
                             "recipe reads BGR 0-255 (their color_mode: BGR); expected 'BGR'.")
        self.image_format = image_format
        self.no_aug_from_iter = None if no_aug_from_iter is None else int(no_aug_from_iter)
        self._dataset = dataset

    def bind_dataset(self, dataset: Sequence[dict]) -> None:
        self._dataset = dataset

    def strong_at(self, iteration: Optional[int]) -> bool:
        """Whether mosaic / affine / mixup run at ``iteration`` (None: unknown -> on)."""
        off = self.no_aug_from_iter
        return off is None or iteration is None or iteration < off

    def load(self, record: dict) -> Sample:
        """The image (BGR uint8) and its non-crowd boxes (XYXY_ABS) and classes."""
        image = utils.read_image(record["file_name"], format=self.image_format)
        utils.check_image_size(record, image)
        anns = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        boxes = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                          for a in anns], dtype=np.float64).reshape(-1, 4)
        classes = np.array([a["category_id"] for a in anns], dtype=np.int64)
        return np.ascontiguousarray(image), boxes, classes

    def _other(self, rng: np.random.Generator) -> Sample:
        if not self._dataset:
            raise InputError(
                "YOLOXTrainMapper: mosaic and mixup need the training dataset dicts; build the "
                "loader with efl.data.build_train_loader (it hands them over), or pass "
                "dataset=<the same list of dicts> to the mapper.")
        return self.load(self._dataset[int(rng.integers(len(self._dataset)))])

    def augment(self, sample: Sample, rng: np.random.Generator, strong: bool,
                others: Optional[List[Sample]] = None) -> Sample:
        """The chain on ``sample``; ``others`` (4: three for mosaic, one for mixup) are
        drawn from the dataset when not given."""
        p = self.params
        if strong:
            others = others if others is not None else [self._other(rng) for _ in range(4)]
            sample = mosaic([sample] + list(others[:3]), p.input_size, rng, p.fill)
            sample = random_affine(sample, rng, p)
            sample = mixup(sample, others[3], rng, p)
        image, boxes, classes = sample
        image = augment_hsv(image, rng, p.hsv_gains)
        image, boxes = hflip(image, boxes, rng, p.flip_prob)
        return random_square_resize((image, boxes, classes), rng, p)

    def __call__(self, record: dict, iteration: Optional[int] = None) -> dict:
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1, size=4))
        image, boxes, classes = self.augment(self.load(record), rng, self.strong_at(iteration))
        instances = Instances(image.shape[:2])
        instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
        out = {k: record[k] for k in ("file_name", "image_id", "height", "width") if k in record}
        out["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        out["instances"] = instances
        return out
