"""Which classes go into which images: the long-tailed training split (a Zipf-Mandelbrot
curve over class rank) and the class-balanced validation split, and LVIS's frequency
groups from training image counts."""

import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ...records import COMMON, FREQUENT, RARE
from .config import SyntheticLongTailConfig
from .draw import class_visuals, family_visuals

__all__ = ["frequency_group", "plan_splits", "plan_train_image_counts"]


def frequency_group(image_count: int, rare_max: int = 10, common_max: int = 100) -> str:
    """LVIS frequency group of a class from its number of training images: 'r', 'c' or 'f'."""
    if image_count <= rare_max:
        return RARE
    return COMMON if image_count <= common_max else FREQUENT


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
class SplitPlan:
    """The classes of every image of both splits (class index = category id - 1)."""

    visuals: List[dict]
    planned_counts: np.ndarray  # training images per class (index = category id - 1)
    train: List[List[int]]  # distinct classes per training image
    val: List[List[int]]


def _family_ranks(visuals: List[dict], rng) -> np.ndarray:
    """Class -> frequency rank with families: the parents take the most frequent ranks (in
    random order), relatives and single classes the others at random."""
    K = len(visuals)
    parents = [i for i, v in enumerate(visuals) if v["family"] is not None and v["mark"] == "none"]
    rest = [i for i in range(K) if i not in set(parents)]
    ranks = np.empty(K, dtype=np.int64)
    ranks[parents] = rng.permutation(len(parents))
    ranks[rest] = len(parents) + rng.permutation(len(rest))
    return ranks


def plan_splits(cfg: SyntheticLongTailConfig) -> SplitPlan:
    rng = np.random.default_rng([cfg.seed, 0])
    K = cfg.num_classes
    if cfg.families:
        visuals = family_visuals(cfg, rng)
        rank_of_class = _family_ranks(visuals, rng)
    else:
        visuals = class_visuals(K, rng)
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
    return SplitPlan(visuals, counts, train, val)


def plan_train_image_counts(cfg: Optional[SyntheticLongTailConfig] = None) -> List[int]:
    """Training images per class (index = category id - 1) that ``cfg`` produces, computed
    without rendering anything (fast); equals the ``image_count`` of the generated JSON."""
    return plan_splits(cfg or SyntheticLongTailConfig()).planned_counts.tolist()
