"""An embedded, long-tailed, LVIS-v1-format detection dataset that is generated on the fly.

Purpose: a stand-in for LVIS that a small RetinaNet can learn from scratch on a CPU in
minutes, with the same annotation format, the same evaluation rules and the same kind of
class imbalance, so that focal loss and Equalized Focal Loss can be compared end to end
(APr / APc / APf included) without downloading anything.

What the pictures hold
----------------------
Every image (default 128 x 128 RGB PNG) shows 2-6 objects on a noisy background. A class is
a visible combination ``<colour> x <shape>`` (x ``<pattern>`` beyond 120 classes):

* 10 shapes: disc, square, triangle, diamond, plus, cross, ring, frame, star, semicircle;
* 12 colours: red, orange, yellow, lime, green, cyan, blue, purple, magenta, brown, white,
  black (each instance jitters its colour by a few levels per channel);
* 2 patterns: solid, striped (only used when ``num_classes > 120``; at most 240 classes).

Objects have a size (geometric mean of the sides) log-uniform in 16-44 px and an aspect
ratio in 0.77-1.3 (so sides of about 14-50 px); they never overlap and are drawn
anti-aliased (4x supersampling); their box is the exact pixel extent of the drawn shape.
The background is a random low-saturation two-colour gradient plus a smooth random field,
a few thin coloured lines and grey specks (clutter that is no class), and the whole image
gets pixel noise (std 6). Background grey levels stay in 80-180 so white and black objects
stay visible.

The long tail
-------------
Class k in frequency rank order (k = 0 most frequent) is put in

    n_k = m * (h / m) ** u_k  training images,  u_k = log((K-1+q)/(k+q)) / log((K-1+q)/q),

a Zipf-Mandelbrot law n_k ~ (k + q) ** -a over rank (q = ``zipf_offset``, 10): the rarest
class gets ``m = min_images_per_class`` (2) images, and the head h is solved for so that the
classes fill exactly the object slots of the training images (each image gets a random
number of distinct classes in [min_objects, max_objects]). A plain exponential over rank
(q -> inf) cannot give "most classes rare" with LVIS's thresholds: the rare (1-10) and
common (11-100) bands are equally wide in log-count, so it puts as many classes in one as
in the other; the Zipf-like curve is convex in log-count (steep head, long flat tail) like
LVIS's. Which visual class gets which rank is a seeded random permutation, so rarity does
not correlate with shape or colour. A (image, class) pair gets a second instance with
probability ``duplicate_prob`` (0.2), so instance counts exceed image counts as in LVIS.

Frequency groups: LVIS's own thresholds, kept
---------------------------------------------
``frequency`` is derived from the training split exactly as LVIS defines it: rare = 1-10
training images, common = 11-100, frequent > 100 (``rare_max_images`` = 10,
``common_max_images`` = 100). We keep LVIS's numbers rather than scaling them down: the
default 2000 training images already give a majority of rare classes and several common
and frequent ones (defaults: 63 rare / 40 common / 17 frequent of 120), and with
unchanged thresholds "rare" keeps its absolute meaning (a class seen in at most 10
training images), which is what makes rare classes hard and what APr measures on LVIS.
Scaling the thresholds with the dataset size would instead call a class with, say, 30
training images "rare". Smaller configurations (e.g. in tests) may leave the frequent
group empty; the thresholds are configurable.

Validation split
----------------
Class-balanced: every class is in the same number of val images (+-1): with the defaults
300 images x 4 objects / 120 classes = 10 images, 10-12 instances per class, so AP per
group is not dominated by noise, and ``LVISEvaluator`` runs in seconds on a CPU.

Format
------
LVIS v1: ``images`` (id, width, height, file_name, coco_url =
``http://synthetic.invalid/<split_folder>/<file_name>``, ``neg_category_ids``,
``not_exhaustive_category_ids`` = []), ``annotations`` (id, image_id, category_id,
bbox [x, y, w, h], area = w * h, segmentation = the box as one polygon) and
``categories`` (id 1..K, name, synset, synonyms, def, frequency, image_count,
instance_count; plus shape/color/pattern). The same categories (with training counts) are
in both files, as in LVIS. Every image is exhaustively annotated, so ``neg_category_ids``
lists every class that is absent from it: LVIS's evaluation only counts a detection of
class c on an image as a false positive if c is annotated there or listed as negative.
Detectron2 v0.6's ``load_lvis_json`` finds an image at ``image_root + split_folder + "/" +
file_name`` (from the last two parts of coco_url), so ``image_root`` ends with "/".

Files under ``root``::

    root/train2017/000000000001.png ...      training images
    root/val2017/000001000001.png ...        validation images
    root/lvis_synthetic_train.json
    root/lvis_synthetic_val.json
    root/_DONE.json                          manifest, written last

Generation is deterministic by seed (same seed -> byte-identical files) and cached: a
dataset whose manifest holds the same generator version and parameters is reused. The
files are written into a temporary sibling folder that is renamed to ``root`` only when
complete, so an interrupted run never leaves anything that looks complete; an existing
``root`` with other parameters or without the manifest is replaced (only if it holds
nothing but this generator's files).

Usage::

    from efl.data.synthetic import SyntheticLongTailConfig, generate_synthetic_lvis
    paths = generate_synthetic_lvis("datasets/synthetic_lvis", SyntheticLongTailConfig(seed=0))
    # paths["train_json"], paths["val_json"], paths["image_root"] (ends with "/")

    python -m efl.data.synthetic --root datasets/synthetic_lvis [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SyntheticLongTailConfig",
    "generate_synthetic_lvis",
    "dataset_paths",
    "is_complete",
    "plan_train_image_counts",
    "frequency_group",
    "class_frequency_table",
    "summarize_split",
    "main",
]

# Bump when the output for a given config changes (invalidates cached datasets).
FORMAT_VERSION = 1

TRAIN_SPLIT = "train2017"
VAL_SPLIT = "val2017"
TRAIN_JSON = "lvis_synthetic_train.json"
VAL_JSON = "lvis_synthetic_val.json"
MANIFEST = "_DONE.json"
URL_PREFIX = "http://synthetic.invalid"
_OWNED_NAMES = frozenset({TRAIN_SPLIT, VAL_SPLIT, TRAIN_JSON, VAL_JSON, MANIFEST})
_VAL_ID_OFFSET = 1_000_000  # val image ids never collide with train ids

SHAPES = (
    "disc", "square", "triangle", "diamond", "plus",
    "cross", "ring", "frame", "star", "semicircle",
)  # fmt: skip
COLORS = {
    "red": (220, 30, 30),
    "orange": (250, 140, 10),
    "yellow": (240, 225, 20),
    "lime": (150, 240, 40),
    "green": (20, 140, 40),
    "cyan": (20, 215, 235),
    "blue": (25, 60, 230),
    "purple": (120, 35, 185),
    "magenta": (240, 45, 215),
    "brown": (125, 70, 20),
    "white": (248, 248, 248),
    "black": (8, 8, 8),
}
PATTERNS = ("solid", "striped")
MAX_CLASSES = len(SHAPES) * len(COLORS) * len(PATTERNS)

_SUPERSAMPLE = 4
_COLOR_JITTER = 12
_GAP = 2  # min pixels between two objects' rectangles


@dataclass(frozen=True)
class SyntheticLongTailConfig:
    """Parameters of the synthetic long-tailed dataset (all of them key the cache).

    Attributes:
        num_classes: K, at most 240 (120 without the striped pattern).
        num_train_images / num_val_images: images per split.
        image_size: square image side in pixels.
        min_objects / max_objects: distinct classes per image (uniform), before duplicates;
            an image never holds more than ``max_objects`` instances.
        min_object_size / max_object_size: object side in pixels (log-uniform).
        min_images_per_class: training images of the rarest class (tail of the curve).
        zipf_offset: q of the Zipf-Mandelbrot curve over class rank; larger = flatter
            (q -> inf is an exponential over rank), smaller = steeper head.
        duplicate_prob: chance that a (image, class) pair gets a second instance.
        noise_std: std of the per-pixel Gaussian noise (grey levels).
        rare_max_images / common_max_images: LVIS frequency thresholds on training image
            counts (rare <= 10 < common <= 100 < frequent).
        seed: everything (class identities, the tail permutation, layouts, pixels).
    """

    num_classes: int = 120
    num_train_images: int = 2000
    num_val_images: int = 300
    image_size: int = 128
    min_objects: int = 2
    max_objects: int = 6
    min_object_size: int = 16
    max_object_size: int = 44
    min_images_per_class: int = 2
    zipf_offset: float = 10.0
    duplicate_prob: float = 0.2
    noise_std: float = 6.0
    rare_max_images: int = 10
    common_max_images: int = 100
    seed: int = 0

    def __post_init__(self):
        def check(ok, msg):
            if not ok:
                raise ValueError(f"SyntheticLongTailConfig: {msg}")

        for f in fields(self):
            v = getattr(self, f.name)
            check(isinstance(v, (int, float)) and not isinstance(v, bool), f"{f.name} must be a number")
        check(2 <= self.num_classes <= MAX_CLASSES, f"num_classes must be in [2, {MAX_CLASSES}]")
        check(self.num_train_images >= 1 and self.num_val_images >= 1, "need >= 1 image per split")
        check(self.image_size >= 32, "image_size must be >= 32")
        check(1 <= self.min_objects <= self.max_objects, "need 1 <= min_objects <= max_objects")
        check(
            8 <= self.min_object_size <= self.max_object_size <= self.image_size // 2,
            "need 8 <= min_object_size <= max_object_size <= image_size / 2",
        )
        check(
            1 <= self.min_images_per_class <= self.num_train_images,
            "need 1 <= min_images_per_class <= num_train_images",
        )
        check(self.zipf_offset > 0, "zipf_offset must be > 0")
        check(0 <= self.duplicate_prob <= 1, "duplicate_prob must be in [0, 1]")
        check(self.noise_std >= 0, "noise_std must be >= 0")
        check(1 <= self.rare_max_images < self.common_max_images, "need 1 <= rare_max < common_max")
        check(self.seed >= 0 and int(self.seed) == self.seed, "seed must be an int >= 0")


# ----------------------------------------------------------------------------- helpers


def frequency_group(image_count: int, rare_max: int = 10, common_max: int = 100) -> str:
    """LVIS frequency group of a class from its number of training images: 'r', 'c' or 'f'."""
    if image_count <= rare_max:
        return "r"
    return "c" if image_count <= common_max else "f"


def dataset_paths(root) -> Dict[str, str]:
    """Absolute paths of a generated dataset (whether or not it exists yet)."""
    root = os.path.abspath(os.fspath(root))
    return {
        "root": root,
        "train_json": os.path.join(root, TRAIN_JSON),
        "val_json": os.path.join(root, VAL_JSON),
        "image_root": os.path.join(root, ""),  # trailing "/": load_lvis_json concatenates
        "manifest": os.path.join(root, MANIFEST),
    }


def _class_visuals(num_classes: int, rng: np.random.Generator) -> List[dict]:
    """K visual identities (pattern, shape, colour), ordered by pattern/shape/colour."""
    patterns = PATTERNS[:1] if num_classes <= len(SHAPES) * len(COLORS) else PATTERNS
    combos = [(p, s, c) for p in patterns for s in SHAPES for c in COLORS]
    chosen = sorted(rng.permutation(len(combos))[:num_classes].tolist())
    out = []
    for i in chosen:
        pattern, shape, color = combos[i]
        name = f"{color}_{shape}" if pattern == "solid" else f"{pattern}_{color}_{shape}"
        out.append({"name": name, "shape": shape, "color": color, "pattern": pattern})
    return out


def _tail_counts(total: int, num_classes: int, num_images: int, tail: int, q: float) -> np.ndarray:
    """Image counts per frequency rank: the largest Zipf-Mandelbrot curve from ``tail``
    (rarest) whose sum does not exceed ``total``; each count in [1, num_images]."""
    k = np.arange(num_classes, dtype=np.float64)
    last = num_classes - 1 + q
    u = np.log(last / (k + q)) / np.log(last / q)  # 1 at the head, 0 at the tail

    def counts(head):
        return np.clip(np.rint(tail * (head / tail) ** u), 1, num_images).astype(np.int64)

    lo, hi = float(tail), float(max(num_images, tail))
    if counts(hi).sum() <= total:
        return counts(hi)
    for _ in range(100):  # bisection in log space: counts(lo) fits, counts(hi) does not
        mid = math.sqrt(lo * hi)
        if counts(mid).sum() <= total:
            lo = mid
        else:
            hi = mid
    return counts(lo)


def _fit_capacities(caps: np.ndarray, target: int, lo: int, hi: int, rng) -> np.ndarray:
    """Change random entries of ``caps`` by +-1 within [lo, hi] until they sum to target."""
    caps = caps.copy()
    if not (lo * len(caps) <= target <= hi * len(caps)):
        raise ValueError(
            f"cannot spread {target} class slots over {len(caps)} images with {lo}-{hi} "
            "classes each; change num_classes / num_*_images / min_objects / max_objects"
        )
    while True:
        diff = target - int(caps.sum())
        if diff == 0:
            return caps
        cand = np.flatnonzero(caps < hi) if diff > 0 else np.flatnonzero(caps > lo)
        pick = rng.choice(cand, size=min(abs(diff), len(cand)), replace=False)
        caps[pick] += 1 if diff > 0 else -1


def _assign(counts: np.ndarray, caps: np.ndarray, rng) -> List[List[int]]:
    """Put class c into counts[c] distinct images so that image i gets caps[i] classes.

    Classes go in decreasing count order, each into the images with the most free slots
    (random tie-break): this greedy finds a solution whenever one exists (Gale-Ryser)."""
    remaining = caps.astype(np.int64).copy()
    members: List[List[int]] = [[] for _ in range(len(caps))]
    for c in np.argsort(-counts, kind="stable"):
        n = int(counts[c])
        key = remaining + rng.random(len(remaining))
        idx = np.argpartition(-key, n - 1)[:n] if n < len(key) else np.arange(len(key))
        if n > len(key) or remaining[idx].min() <= 0:
            raise ValueError(
                "class/image counts are not realisable (a class needs more images than have "
                "free slots); lower the head of the tail or raise max_objects"
            )
        remaining[idx] -= 1
        for i in np.sort(idx):
            members[i].append(int(c))
    return members


@dataclass
class _Plan:
    visuals: List[dict]
    planned_counts: np.ndarray  # training images per class (index = category id - 1)
    train: List[List[int]]  # distinct classes per training image
    val: List[List[int]]


def _plan(cfg: SyntheticLongTailConfig) -> _Plan:
    rng = np.random.default_rng([cfg.seed, 0])
    K = cfg.num_classes
    visuals = _class_visuals(K, rng)
    rank_of_class = rng.permutation(K)  # class id-1 -> frequency rank

    hi = min(cfg.max_objects, K)
    lo = min(cfg.min_objects, hi)
    N = cfg.num_train_images
    caps = rng.integers(lo, hi + 1, size=N)
    by_rank = _tail_counts(int(caps.sum()), K, N, cfg.min_images_per_class, cfg.zipf_offset)
    counts = by_rank[rank_of_class]
    target = int(counts.sum())
    if target < lo * N:
        lo = 1  # too few slots for min_objects everywhere: allow single-object images
    caps = _fit_capacities(caps, target, lo, hi, rng)
    train = _assign(counts, caps, rng)

    M = cfg.num_val_images
    vhi = min(cfg.max_objects, K)
    vlo = min(cfg.min_objects, vhi)
    vcaps = rng.integers(vlo, vhi + 1, size=M)
    total = int(vcaps.sum())
    if total < K:
        raise ValueError(
            f"{M} val images with {vlo}-{vhi} objects cannot hold all {K} classes; "
            "raise num_val_images"
        )
    vcounts = np.full(K, total // K, dtype=np.int64)
    vcounts[rng.permutation(K)[: total % K]] += 1
    val = _assign(vcounts, vcaps, rng)
    return _Plan(visuals, counts, train, val)


def plan_train_image_counts(cfg: Optional[SyntheticLongTailConfig] = None) -> List[int]:
    """Training images per class (index = category id - 1) that ``cfg`` produces, computed
    without rendering anything (fast); equals the ``image_count`` of the generated JSON."""
    return _plan(cfg or SyntheticLongTailConfig()).planned_counts.tolist()


# ----------------------------------------------------------------------------- drawing


def _normalised_polygon(points: np.ndarray, W: int, H: int) -> List[Tuple[float, float]]:
    p = points - points.min(0)
    p = p / np.maximum(p.max(0), 1e-9) * [W - 1, H - 1]
    return [tuple(map(float, xy)) for xy in p]


def _shape_alpha(shape: str, w: int, h: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of ``shape`` filling a w x h box, (h, w) float32."""
    W, H = w * _SUPERSAMPLE, h * _SUPERSAMPLE
    m = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(m)
    stroke = max(_SUPERSAMPLE, round(0.24 * min(W, H)))
    if shape == "disc":
        d.ellipse([0, 0, W - 1, H - 1], fill=255)
    elif shape == "square":
        d.rectangle([0, 0, W - 1, H - 1], fill=255)
    elif shape == "triangle":
        d.polygon([(W / 2, 0), (W - 1, H - 1), (0, H - 1)], fill=255)
    elif shape == "diamond":
        d.polygon([(W / 2, 0), (W - 1, H / 2), (W / 2, H - 1), (0, H / 2)], fill=255)
    elif shape == "plus":
        tw, th = 0.36 * W, 0.36 * H
        d.rectangle([(W - tw) / 2, 0, (W + tw) / 2, H - 1], fill=255)
        d.rectangle([0, (H - th) / 2, W - 1, (H + th) / 2], fill=255)
    elif shape == "cross":
        a, b = 0.24 * W, 0.24 * H
        d.polygon([(0, 0), (a, 0), (W - 1, H - 1 - b), (W - 1, H - 1), (W - 1 - a, H - 1), (0, b)], fill=255)
        d.polygon([(W - 1, 0), (W - 1 - a, 0), (0, H - 1 - b), (0, H - 1), (a, H - 1), (W - 1, b)], fill=255)
    elif shape == "ring":
        d.ellipse([0, 0, W - 1, H - 1], fill=255)
        d.ellipse([stroke, stroke, W - 1 - stroke, H - 1 - stroke], fill=0)
    elif shape == "frame":
        d.rectangle([0, 0, W - 1, H - 1], fill=255)
        d.rectangle([stroke, stroke, W - 1 - stroke, H - 1 - stroke], fill=0)
    elif shape == "star":
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
        d.polygon(_normalised_polygon(pts, W, H), fill=255)
    elif shape == "semicircle":
        d.pieslice([0, 0, W - 1, 2 * H - 1], 180, 360, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    m = m.resize((w, h), Image.BOX)
    return np.asarray(m, dtype=np.float32) / 255.0


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    pos = np.linspace(0, n_in - 1, n_out)
    i0 = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - i0
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), i0] = 1 - frac
    m[np.arange(n_out), i0 + 1] += frac
    return m


def _background(rng: np.random.Generator, S: int) -> np.ndarray:
    """Gradient + smooth random field + clutter (lines, specks): (S, S, 3) float32."""
    c0 = rng.uniform(80, 180) + rng.uniform(-18, 18, 3)
    c1 = rng.uniform(80, 180) + rng.uniform(-18, 18, 3)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    t = xx * np.cos(theta) + yy * np.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    bg = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * t[..., None]
    coarse = rng.normal(0, 12, (5, 5, 3)).astype(np.float32)
    interp = _interp_matrix(S, 5)
    bg += np.stack([interp @ coarse[:, :, c] @ interp.T for c in range(3)], axis=-1)
    im = Image.fromarray(np.clip(np.rint(bg), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0, x1, y1 = rng.uniform(-0.1 * S, 1.1 * S, 4)
        d.line([(x0, y0), (x1, y1)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=1)
    for _ in range(int(rng.integers(0, 9))):
        cx, cy = rng.uniform(0, S, 2)
        r = rng.uniform(0.8, 2.0)
        g = int(rng.integers(60, 200))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(g, g, g))
    return np.asarray(im, dtype=np.float32)


def _place(rng, w, h, S, placed) -> Optional[Tuple[int, int]]:
    """A random top-left (x, y) for a w x h rectangle not within _GAP px of ``placed``."""
    xs = rng.integers(0, S - w + 1, 64)
    ys = rng.integers(0, S - h + 1, 64)
    if not placed:
        return int(xs[0]), int(ys[0])
    p = np.asarray(placed)  # (n, 4) x, y, w, h
    clash = (
        (xs[:, None] < p[:, 0] + p[:, 2] + _GAP)
        & (p[:, 0] < xs[:, None] + w + _GAP)
        & (ys[:, None] < p[:, 1] + p[:, 3] + _GAP)
        & (p[:, 1] < ys[:, None] + h + _GAP)
    ).any(1)
    free = np.flatnonzero(~clash)
    if len(free) == 0:
        return None
    return int(xs[free[0]]), int(ys[free[0]])


def _render(
    rng: np.random.Generator, classes: Sequence[int], visuals: List[dict], cfg: SyntheticLongTailConfig
) -> Tuple[np.ndarray, np.ndarray, List[Tuple[int, List[int]]]]:
    """Draw one image. Returns (image uint8 (S,S,3), background before objects and noise
    (float32), [(class index, [x, y, w, h])])."""
    S = cfg.image_size
    bg = _background(rng, S)
    img = bg.copy()

    order = rng.permutation(len(classes))
    items = [(int(classes[i]), True) for i in order]  # (class, mandatory)
    for c, _ in list(items):
        if len(items) < cfg.max_objects and rng.random() < cfg.duplicate_prob:
            items.append((c, False))
    lo_s, hi_s = math.log(cfg.min_object_size), math.log(cfg.max_object_size)
    sizes = np.exp(rng.uniform(lo_s, hi_s, len(items)))
    aspect = np.exp(rng.uniform(-math.log(1.3), math.log(1.3), len(items)))
    wh = np.stack([sizes * np.sqrt(aspect), sizes / np.sqrt(aspect)], 1)
    budget = 0.35 * S * S  # keep packing easy
    area = float(np.prod(wh, 1).sum())
    if area > budget:
        wh *= math.sqrt(budget / area)
    wh = np.clip(np.rint(wh), 8, S // 2).astype(int)
    # mandatory first, larger first (easier packing)
    seq = sorted(range(len(items)), key=lambda i: (not items[i][1], -wh[i, 0] * wh[i, 1], i))

    placed: List[List[int]] = []
    objects = []
    for i in seq:
        c, mandatory = items[i]
        w, h = int(wh[i, 0]), int(wh[i, 1])
        pos = None
        for _ in range(8):
            pos = _place(rng, w, h, S, placed)
            if pos is not None:
                break
            w, h = max(8, int(w * 0.85)), max(8, int(h * 0.85))
        if pos is None:
            if not mandatory:
                continue
            # practically never: overlap allowed rather than losing the class from the image
            pos = (int(rng.integers(0, S - w + 1)), int(rng.integers(0, S - h + 1)))
        x, y = pos
        placed.append([x, y, w, h])
        vis = visuals[c]
        alpha = _shape_alpha(vis["shape"], w, h)
        color = np.clip(
            np.asarray(COLORS[vis["color"]], np.float32) + rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, 3),
            0,
            255,
        ).astype(np.float32)
        paint = np.broadcast_to(color, (h, w, 3))
        if vis["pattern"] == "striped":
            yy, xx = np.mgrid[0:h, 0:w]
            period = max(2, round(min(w, h) / 5))
            stripe = ((xx + yy) // period) % 2 == 1
            paint = np.where(stripe[..., None], paint * 0.45, paint)
        a = alpha[..., None]
        region = img[y : y + h, x : x + w]
        img[y : y + h, x : x + w] = region * (1 - a) + paint * a
        rows = np.flatnonzero(alpha.max(1) > 0)
        cols = np.flatnonzero(alpha.max(0) > 0)
        box = [x + int(cols[0]), y + int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
        objects.append((c, box))

    if cfg.noise_std > 0:
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(cfg.noise_std)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out, bg, objects


# ----------------------------------------------------------------------------- writing


def _write_split(
    folder: Path,
    split: str,
    split_code: int,
    members: List[List[int]],
    visuals: List[dict],
    cfg: SyntheticLongTailConfig,
    id_offset: int,
    ann_id_start: int,
    pbar,
) -> Tuple[List[dict], List[dict]]:
    (folder / split).mkdir(parents=True, exist_ok=True)
    K = cfg.num_classes
    images, anns = [], []
    ann_id = ann_id_start
    for i, classes in enumerate(members):
        rng = np.random.default_rng([cfg.seed, split_code, i])
        img, _, objects = _render(rng, classes, visuals, cfg)
        image_id = id_offset + i + 1
        file_name = f"{image_id:012d}.png"
        Image.fromarray(img).save(folder / split / file_name, format="PNG", compress_level=1)
        present = {c + 1 for c, _ in objects}
        images.append(
            {
                "id": image_id,
                "width": cfg.image_size,
                "height": cfg.image_size,
                "file_name": file_name,
                "coco_url": f"{URL_PREFIX}/{split}/{file_name}",
                "neg_category_ids": [c for c in range(1, K + 1) if c not in present],
                "not_exhaustive_category_ids": [],
            }
        )
        for c, (x, y, w, h) in objects:
            x0, y0, x1, y1 = float(x), float(y), float(x + w), float(y + h)
            anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": c + 1,
                    "bbox": [x0, y0, float(w), float(h)],
                    "area": float(w * h),
                    "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                }
            )
            ann_id += 1
        if pbar is not None:
            pbar.update(1)
    return images, anns


def _categories(visuals: List[dict], train_anns: List[dict], cfg: SyntheticLongTailConfig) -> List[dict]:
    K = len(visuals)
    inst = np.zeros(K, dtype=np.int64)
    imgs = [set() for _ in range(K)]
    for a in train_anns:
        inst[a["category_id"] - 1] += 1
        imgs[a["category_id"] - 1].add(a["image_id"])
    cats = []
    for j, v in enumerate(visuals):
        n_img = len(imgs[j])
        pat = "" if v["pattern"] == "solid" else f"{v['pattern']} "
        cats.append(
            {
                "id": j + 1,
                "name": v["name"],
                "synset": f"{v['name']}.n.01",
                "synonyms": [v["name"]],
                "def": f"a {pat}{v['color']} {v['shape']}",
                "frequency": frequency_group(n_img, cfg.rare_max_images, cfg.common_max_images),
                "image_count": n_img,
                "instance_count": int(inst[j]),
                "shape": v["shape"],
                "color": v["color"],
                "pattern": v["pattern"],
            }
        )
    return cats


def _dump_json(obj, path: Path) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def _generate_into(folder: Path, cfg: SyntheticLongTailConfig, progress: bool) -> dict:
    plan = _plan(cfg)
    total = cfg.num_train_images + cfg.num_val_images
    pbar = None
    try:
        from tqdm import tqdm

        pbar = tqdm(total=total, desc="synthetic LVIS", unit="img", disable=not progress)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        pass
    try:
        tr_imgs, tr_anns = _write_split(folder, TRAIN_SPLIT, 1, plan.train, plan.visuals, cfg, 0, 1, pbar)
        va_imgs, va_anns = _write_split(
            folder, VAL_SPLIT, 2, plan.val, plan.visuals, cfg, _VAL_ID_OFFSET, len(tr_anns) + 1, pbar
        )
    finally:
        if pbar is not None:
            pbar.close()
    cats = _categories(plan.visuals, tr_anns, cfg)
    info = {
        "description": "Synthetic long-tailed LVIS-format dataset (efl.data.synthetic)",
        "version": str(FORMAT_VERSION),
        "seed": cfg.seed,
    }
    for name, imgs, anns in ((TRAIN_JSON, tr_imgs, tr_anns), (VAL_JSON, va_imgs, va_anns)):
        _dump_json(
            {"info": info, "licenses": [], "images": imgs, "annotations": anns, "categories": cats},
            folder / name,
        )
    groups = {g: sum(c["frequency"] == g for c in cats) for g in "rcf"}
    manifest = {
        "generator": "efl.data.synthetic",
        "format_version": FORMAT_VERSION,
        "config": asdict(cfg),
        "files": {"train_json": TRAIN_JSON, "val_json": VAL_JSON, "splits": [TRAIN_SPLIT, VAL_SPLIT]},
        "num_images": {TRAIN_SPLIT: len(tr_imgs), VAL_SPLIT: len(va_imgs)},
        "num_annotations": {TRAIN_SPLIT: len(tr_anns), VAL_SPLIT: len(va_anns)},
        "frequency_groups": groups,
    }
    _dump_json(manifest, folder / MANIFEST)  # last: marks the folder complete
    return manifest


def _read_manifest(root: Path) -> Optional[dict]:
    try:
        with open(root / MANIFEST) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_complete(root, cfg: Optional[SyntheticLongTailConfig] = None) -> bool:
    """True if ``root`` holds a complete dataset generated by this version with ``cfg``."""
    root = Path(root)
    cfg = cfg or SyntheticLongTailConfig()
    m = _read_manifest(root)
    if not m or m.get("format_version") != FORMAT_VERSION or m.get("config") != asdict(cfg):
        return False
    if not ((root / TRAIN_JSON).is_file() and (root / VAL_JSON).is_file()):
        return False
    for split, n in m.get("num_images", {}).items():
        try:
            if sum(1 for _ in os.scandir(root / split)) != n:
                return False
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_siblings(root: Path) -> None:
    """Delete temp/old folders of ``root`` left by killed runs (their pid is gone)."""
    prefixes = (f".{root.name}.tmp-", f".{root.name}.old-")
    try:
        entries = list(os.scandir(root.parent))
    except OSError:
        return
    for e in entries:
        if not e.is_dir(follow_symlinks=False) or not e.name.startswith(prefixes):
            continue
        prefix = next(x for x in prefixes if e.name.startswith(x))
        try:
            pid = int(e.name[len(prefix) :].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(e.path, ignore_errors=True)


def _check_owned(root: Path) -> None:
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder")
    foreign = sorted(set(os.listdir(root)) - _OWNED_NAMES)
    if foreign:
        raise FileExistsError(
            f"{root} holds files that the synthetic dataset generator did not write "
            f"({foreign[:5]}); refusing to replace it. Use an empty or new folder."
        )


def generate_synthetic_lvis(
    root, cfg: Optional[SyntheticLongTailConfig] = None, progress: bool = True, force: bool = False
) -> Dict[str, str]:
    """Generate (or reuse) the synthetic long-tailed LVIS-format dataset under ``root``.

    Args:
        root: dataset folder (created; replaced if it holds an incomplete dataset or one
            with other parameters, and nothing else).
        cfg: parameters; default :class:`SyntheticLongTailConfig()`.
        progress: show a tqdm progress bar while writing images.
        force: regenerate even if a complete dataset with the same parameters exists.

    Returns:
        dict with absolute paths: "train_json", "val_json", "image_root" (ends with the
        path separator, as ``load_lvis_json`` needs), "root", "manifest".
    """
    cfg = cfg or SyntheticLongTailConfig()
    root = Path(os.path.abspath(os.fspath(root)))
    paths = dataset_paths(root)
    if not force and is_complete(root, cfg):
        return paths
    _check_owned(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(root)

    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-{os.getpid()}-", dir=root.parent))
    try:
        _generate_into(tmp, cfg, progress)
        if not force and is_complete(root, cfg):  # a concurrent run finished first
            return paths
        _check_owned(root)
        try:
            if root.exists():
                old = root.parent / f".{root.name}.old-{os.getpid()}-{time.monotonic_ns()}"
                os.rename(root, old)
                os.rename(tmp, root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, root)
        except OSError:
            # another process (e.g. a second worker) put its copy in place meanwhile
            if not is_complete(root, cfg):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return paths


# ----------------------------------------------------------------------------- summaries


def class_frequency_table(json_path) -> List[dict]:
    """Per category (by id): name, frequency, the image_count / instance_count stored in
    the categories (training counts), and the counts measured in this file's annotations."""
    with open(json_path) as f:
        data = json.load(f)
    imgs: Dict[int, set] = {}
    inst: Dict[int, int] = {}
    for a in data["annotations"]:
        imgs.setdefault(a["category_id"], set()).add(a["image_id"])
        inst[a["category_id"]] = inst.get(a["category_id"], 0) + 1
    rows = []
    for c in sorted(data["categories"], key=lambda c: c["id"]):
        rows.append(
            {
                "id": c["id"],
                "name": c["name"],
                "frequency": c.get("frequency"),
                "image_count": c.get("image_count"),
                "instance_count": c.get("instance_count"),
                "images_in_file": len(imgs.get(c["id"], ())),
                "instances_in_file": inst.get(c["id"], 0),
            }
        )
    return rows


def summarize_split(json_path) -> dict:
    """Images, instances and, per frequency group, classes / images / instances of a file."""
    with open(json_path) as f:
        n_images = len(json.load(f)["images"])
    rows = class_frequency_table(json_path)
    out = {"images": n_images, "instances": sum(r["instances_in_file"] for r in rows), "groups": {}}
    for g in "rcf":
        rs = [r for r in rows if r["frequency"] == g]
        out["groups"][g] = {
            "classes": len(rs),
            "instances": sum(r["instances_in_file"] for r in rs),
            "images_per_class": [min((r["images_in_file"] for r in rs), default=0),
                                 max((r["images_in_file"] for r in rs), default=0)],
            "instances_per_class": [min((r["instances_in_file"] for r in rs), default=0),
                                    max((r["instances_in_file"] for r in rs), default=0)],
        }  # fmt: skip
    return out


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, str]:
    d = SyntheticLongTailConfig()
    p = argparse.ArgumentParser(
        prog="python -m efl.data.synthetic",
        description="Generate (or reuse) the synthetic long-tailed LVIS-format dataset.",
    )
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-classes", type=int, default=d.num_classes)
    p.add_argument("--num-train-images", type=int, default=d.num_train_images)
    p.add_argument("--num-val-images", type=int, default=d.num_val_images)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--force", action="store_true", help="regenerate even if cached")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = SyntheticLongTailConfig(
        num_classes=a.num_classes,
        num_train_images=a.num_train_images,
        num_val_images=a.num_val_images,
        image_size=a.image_size,
        seed=a.seed,
    )
    t0 = time.perf_counter()
    cached = not a.force and is_complete(a.root, cfg)
    paths = generate_synthetic_lvis(a.root, cfg, progress=not a.no_progress, force=a.force)
    dt = time.perf_counter() - t0
    print(f"{'reused' if cached else 'generated'} {paths['root']} in {dt:.1f} s")
    for k in ("train_json", "val_json", "image_root"):
        print(f"  {k}: {paths[k]}")
    for split, key in (("train", "train_json"), ("val", "val_json")):
        s = summarize_split(paths[key])
        groups = ", ".join(
            f"{g}: {v['classes']} classes / {v['instances']} inst "
            f"({v['images_per_class'][0]}-{v['images_per_class'][1]} img/class)"
            for g, v in s["groups"].items()
        )
        print(f"  {split}: {s['images']} images, {s['instances']} instances; {groups}")
    return paths


if __name__ == "__main__":
    main()
