"""A procedural long-tailed detection stream for the GPU probe (tools/scale_probe.py):
images drawn on the fly on the training device, nothing read from or written to disk
(the validation annotations go to one LVIS JSON file for the evaluator).

Design, fixed from LVIS v1's statistics before any run (see ``StreamDesign``):

- K classes split into rare / common / frequent in LVIS's proportions (337 / 461 / 405 of
  1203); each class is a colour x shape x pattern (10 x 6 x 5 = 300 visuals), assigned by
  a fixed permutation, so a class's frequency says nothing about its looks;
- image frequency of each class (the probability that a training image contains it),
  log-spaced within its group's band: LVIS's bands (rare: 1-10 of 100,170 images, i.e.
  1e-5..1e-4; common 1e-4..1e-3; frequent 1e-3 and more, median ~4e-3) multiplied by 10,
  so that the rare band ends at 1e-3, the probe's ceiling: rare 1e-4..1e-3, common
  1e-3..1e-2, frequent 1e-2..1e-1 (about 4.4 objects per image);
- one instance per present class, boxes with sides 32-128 px and aspect 1/2..2, not
  overlapping, on a smooth noisy background;
- a fixed class-balanced validation set: every class in ``val_images_per_class`` images,
  4 objects per image, all absent classes listed as negatives (exhaustive labels).

Training image i is a pure function of (seed, i): two models trained on the stream see
the same images in the same order.
"""

import dataclasses
import json
import math
from typing import Dict, List, Tuple

import numpy as np
import torch

from ..errors import InputError

__all__ = ["StreamDesign", "ProceduralStream", "LVIS_GROUP_SHARES", "MAX_CLASSES"]

LVIS_GROUP_SHARES = {"r": 337 / 1203, "c": 461 / 1203, "f": 405 / 1203}
COLORS = {  # BGR, 0-255
    "red": (40, 40, 220), "green": (50, 180, 50), "blue": (210, 60, 40), "yellow": (40, 220, 230),
    "cyan": (220, 210, 40), "magenta": (200, 50, 210), "orange": (30, 140, 250),
    "purple": (140, 40, 110), "white": (245, 245, 245), "black": (15, 15, 15),
}
SHAPES = ("rectangle", "ellipse", "diamond", "triangle", "ring", "cross")
PATTERNS = ("solid", "hstripes", "vstripes", "checker", "diagonal")
MAX_CLASSES = len(COLORS) * len(SHAPES) * len(PATTERNS)


@dataclasses.dataclass(frozen=True)
class StreamDesign:
    num_classes: int = 300
    image_size: int = 512                 # square images, pixels
    bands: Tuple[Tuple[float, float], ...] = ((1e-4, 1e-3), (1e-3, 1e-2), (1e-2, 1e-1))  # r, c, f
    min_box: int = 32                     # box side range, pixels
    max_box: int = 128
    max_objects: int = 12
    val_images_per_class: int = 4
    val_objects_per_image: int = 4
    design_seed: int = 0                  # class visuals; not the training seed

    def __post_init__(self):
        if not 3 <= self.num_classes <= MAX_CLASSES:
            raise InputError(f"num_classes must be in 3..{MAX_CLASSES} (colour x shape x "
                             f"pattern visuals); got {self.num_classes}")
        if self.max_box >= self.image_size:
            raise InputError(f"max_box ({self.max_box}) must be below image_size ({self.image_size})")

    def groups(self) -> List[str]:
        """(K,) 'r' / 'c' / 'f' per class: LVIS's shares, rounded; frequent takes the rest."""
        k = self.num_classes
        nr = max(1, round(k * LVIS_GROUP_SHARES["r"]))
        nc = max(1, round(k * LVIS_GROUP_SHARES["c"]))
        return ["r"] * nr + ["c"] * nc + ["f"] * (k - nr - nc)

    def frequencies(self) -> np.ndarray:
        """(K,) image frequency per class, log-spaced within its group's band."""
        groups = self.groups()
        out = np.zeros(self.num_classes)
        for g, (lo, hi) in zip("rcf", self.bands):
            idx = [i for i, x in enumerate(groups) if x == g]
            out[idx] = np.exp(np.linspace(math.log(lo), math.log(hi), len(idx))).clip(lo, hi)
        return out


def _shape_mask(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-mask on the box's normalised grid u, v in [-1, 1]."""
    if shape == "rectangle":
        return torch.ones_like(u, dtype=torch.bool)
    if shape == "ellipse":
        return u * u + v * v <= 1
    if shape == "diamond":
        return u.abs() + v.abs() <= 1
    if shape == "triangle":
        return v >= 2 * u.abs() - 1
    if shape == "ring":
        r = u * u + v * v
        return (r <= 1) & (r >= 0.3)
    return (u.abs() <= 0.35) | (v.abs() <= 0.35)  # cross


def _pattern_on(pattern: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Where the pattern shows the colour (elsewhere a darker shade)."""
    if pattern == "solid":
        return torch.ones_like(u, dtype=torch.bool)
    if pattern == "hstripes":
        return torch.sin(v * 2.5 * math.pi) > 0
    if pattern == "vstripes":
        return torch.sin(u * 2.5 * math.pi) > 0
    if pattern == "checker":
        return (torch.sin(u * 2 * math.pi) > 0) ^ (torch.sin(v * 2 * math.pi) > 0)
    return torch.sin((u + v) * 2 * math.pi) > 0  # diagonal


class ProceduralStream:
    """Training batches and the validation set of a :class:`StreamDesign`.

    ``batch(i, n)``: Detectron2 training inputs ({"image": (3, S, S) BGR float, "instances"})
    of images n*i .. n*i+n-1, on ``device``. ``val_inputs()``: the validation set as
    inference inputs (with "image_id", "height", "width") and ``lvis_json()`` its
    annotations in LVIS format.
    """

    def __init__(self, design: StreamDesign, seed: int, device="cpu"):
        self.design, self.seed, self.device = design, int(seed), torch.device(device)
        self.group = design.groups()
        self.frequency = design.frequencies()
        rng = np.random.default_rng([design.design_seed, 7])
        visuals = [(c, s, p) for c in COLORS for s in SHAPES for p in PATTERNS]
        order = rng.permutation(len(visuals))[: design.num_classes]
        self.visuals = [visuals[i] for i in order]
        self._val = None

    # ----- layout (CPU, numpy: cheap and exactly reproducible) ---------------------------
    def _place(self, rng, classes) -> List[Tuple[int, Tuple[int, int, int, int]]]:
        d, placed = self.design, []
        for c in classes:
            for _ in range(20):
                side = math.exp(rng.uniform(math.log(d.min_box), math.log(d.max_box)))
                aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
                w = int(min(d.max_box, max(d.min_box // 2, side * math.sqrt(aspect))))
                h = int(min(d.max_box, max(d.min_box // 2, side / math.sqrt(aspect))))
                x, y = int(rng.integers(0, d.image_size - w)), int(rng.integers(0, d.image_size - h))
                if all(x + w <= a or a + aw <= x or y + h <= b or b + bh <= y
                       for _, (a, b, aw, bh) in placed):
                    placed.append((int(c), (x, y, w, h)))
                    break
        return placed

    def train_layout(self, index: int):
        """Objects [(class, (x, y, w, h))] of training image ``index``."""
        rng = np.random.default_rng([self.seed, 1, index])
        present = np.flatnonzero(rng.random(self.design.num_classes) < self.frequency)
        present = rng.permutation(present)[: self.design.max_objects]
        return self._place(rng, present)

    # ----- drawing (on the device) --------------------------------------------------------
    def draw(self, objects, noise_seed: int) -> torch.Tensor:
        """(3, S, S) float BGR image in [0, 255] with ``objects`` drawn on it."""
        s, dev = self.design.image_size, self.device
        gen = torch.Generator(device=dev).manual_seed(noise_seed)
        coarse = torch.rand(3, 1, 8, 8, generator=gen, device=dev) * 110 + 60
        image = torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear",
                                                align_corners=False)[:, 0]
        image = image + torch.randn(3, s, s, generator=gen, device=dev) * 14
        for c, (x, y, w, h) in objects:
            color, shape, pattern = self.visuals[c]
            v, u = torch.meshgrid(torch.linspace(-1, 1, h, device=dev),
                                  torch.linspace(-1, 1, w, device=dev), indexing="ij")
            mask = _shape_mask(shape, u, v)
            bgr = torch.tensor(COLORS[color], dtype=image.dtype, device=dev).view(3, 1, 1)
            fill = torch.where(_pattern_on(pattern, u, v), bgr, bgr * 0.45 + 20)
            region = image[:, y:y + h, x:x + w]
            image[:, y:y + h, x:x + w] = torch.where(mask, fill, region)
        return image.clamp_(0, 255)

    def _instances(self, objects):
        from detectron2.structures import Boxes, Instances

        s = self.design.image_size
        inst = Instances((s, s))
        boxes = torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h) in objects],
                             dtype=torch.float32).reshape(-1, 4)
        inst.gt_boxes = Boxes(boxes.to(self.device))
        inst.gt_classes = torch.tensor([c for c, _ in objects], dtype=torch.int64, device=self.device)
        return inst

    def batch(self, iteration: int, batch_size: int) -> List[dict]:
        out = []
        for i in range(iteration * batch_size, (iteration + 1) * batch_size):
            objects = self.train_layout(i)
            out.append({"image": self.draw(objects, self.seed * 1_000_003 + i),
                        "instances": self._instances(objects)})
        return out

    # ----- validation ----------------------------------------------------------------------
    def val_layouts(self):
        """Class-balanced: each class in ``val_images_per_class`` images (fixed, seed-free)."""
        if self._val is None:
            d = self.design
            rng = np.random.default_rng([d.design_seed, 2])
            pool = np.concatenate([rng.permutation(d.num_classes)
                                   for _ in range(d.val_images_per_class)])
            per = d.val_objects_per_image
            self._val = [self._place(rng, pool[i:i + per]) for i in range(0, len(pool), per)]
        return self._val

    def val_inputs(self) -> List[dict]:
        s = self.design.image_size
        return [{"image": self.draw(objs, 10**9 + i), "image_id": i + 1, "height": s, "width": s}
                for i, objs in enumerate(self.val_layouts())]

    def lvis_json(self) -> Dict:
        """The validation annotations in LVIS v1 format (category ids 1..K, exhaustive)."""
        s, k = self.design.image_size, self.design.num_classes
        images, anns, counts = [], [], np.zeros(k, dtype=int)
        for i, objs in enumerate(self.val_layouts()):
            present = {c + 1 for c, _ in objs}
            images.append({"id": i + 1, "width": s, "height": s, "file_name": f"{i + 1}.png",
                           "neg_category_ids": [c for c in range(1, k + 1) if c not in present],
                           "not_exhaustive_category_ids": []})
            for c, (x, y, w, h) in objs:
                counts[c] += 1
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1,
                             "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h),
                             "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        cats = [{"id": c + 1, "name": "_".join(self.visuals[c]), "synset": f"c{c}.n.01",
                 "frequency": self.group[c], "image_count": int(counts[c]),
                 "instance_count": int(counts[c])} for c in range(k)]
        return {"images": images, "annotations": anns, "categories": cats,
                "info": {"description": "efl procedural long-tail probe, validation"}}

    def write_lvis_json(self, path: str) -> str:
        with open(path, "w") as f:
            json.dump(self.lvis_json(), f)
        return path
