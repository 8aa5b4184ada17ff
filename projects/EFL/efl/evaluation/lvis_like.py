"""Random LVIS-shaped ground truth and detections, for checking and timing evaluators.

The defaults follow LVIS v1 val: 19,809 images, 1203 classes (about 28% rare, 38% common,
34% frequent), about 12 boxes per image over a few classes, 300 detections per image.
Detections are jittered copies of the ground truth (some with the wrong class) plus
background boxes of present, negative or random classes, with random scores.
"""

from typing import List, Tuple

import numpy as np

__all__ = ["lvis_like"]


def lvis_like(
    num_images: int = 19809,
    num_classes: int = 1203,
    dets_per_image: int = 300,
    seed: int = 0,
    boxes_per_image: float = 12.0,
    score_decimals: int = 0,
    ignore_fraction: float = 0.0,
) -> Tuple[dict, List[dict]]:
    """(LVIS-format ground-truth dict, COCO-format detection list).

    Args:
        dets_per_image: detections per image (more than 300 exercises the cap).
        score_decimals: round scores to this many decimals (ties); 0 keeps them as drawn.
        ignore_fraction: ground-truth boxes marked ``"ignore": 1`` (not in LVIS itself).
    """
    rng = np.random.default_rng(seed)
    K = num_classes
    freq = rng.choice(["r", "c", "f"], size=K, p=[0.28, 0.38, 0.34])
    weights = np.where(freq == "f", 30.0, np.where(freq == "c", 3.0, 0.3)) * rng.uniform(0.5, 1.5, K)
    weights /= weights.sum()
    cats = [{"id": k + 1, "name": f"class_{k + 1}", "frequency": str(freq[k])} for k in range(K)]
    image_ids = rng.permutation(np.arange(1, 3 * num_images + 1))[:num_images]
    W, H = 640, 480
    images, anns, results = [], [], []
    for i, img_id in enumerate(image_ids.tolist()):
        n = max(1, rng.poisson(boxes_per_image))
        present = rng.choice(K, size=min(K, rng.integers(1, 7)), replace=False, p=weights) + 1
        g_cat = rng.choice(present, size=n)
        wh = np.exp(rng.uniform(np.log(4), np.log(400), size=(n, 2)))
        xy = rng.uniform(0, 1, size=(n, 2)) * np.maximum([W, H] - wh, 1)
        g_box = np.c_[xy, wh]
        area = wh[:, 0] * wh[:, 1] * rng.uniform(0.5, 1.0, n)
        absent = np.setdiff1d(np.arange(1, K + 1), present)
        neg = rng.choice(absent, size=min(len(absent), rng.integers(0, 20)), replace=False)
        nel = present[rng.uniform(size=len(present)) < 0.1]
        images.append({"id": img_id, "width": W, "height": H,
                       "coco_url": f"http://images.cocodataset.org/val2017/{img_id:012d}.jpg",
                       "neg_category_ids": sorted(neg.tolist()),
                       "not_exhaustive_category_ids": sorted(nel.tolist())})
        for j in range(n):
            a = {"id": len(anns) + 1, "image_id": img_id, "category_id": int(g_cat[j]),
                 "bbox": g_box[j].round(2).tolist(), "area": float(area[j])}
            if ignore_fraction and rng.uniform() < ignore_fraction:
                a["ignore"] = 1
            anns.append(a)
        # detections: jittered ground truth (class kept with prob 0.8), then background
        src = rng.integers(0, n, size=dets_per_image)
        near = rng.uniform(size=dets_per_image) < 0.3
        jitter = rng.normal(0, 0.15, size=(dets_per_image, 4)) * np.c_[g_box[src, 2:], g_box[src, 2:]]
        d_box = np.where(near[:, None], g_box[src] + jitter,
                         np.c_[rng.uniform(0, 1, (dets_per_image, 2)) * [W, H],
                               np.exp(rng.uniform(np.log(2), np.log(300), (dets_per_image, 2)))])
        d_box[:, 2:] = np.abs(d_box[:, 2:])
        pool = np.concatenate([present, neg, rng.integers(1, K + 1, size=4)])
        d_cat = np.where(near & (rng.uniform(size=dets_per_image) < 0.8), g_cat[src],
                         rng.choice(pool, size=dets_per_image))
        score = rng.uniform(size=dets_per_image) * np.where(near, 1.0, 0.6)
        if score_decimals:
            score = score.round(score_decimals)
        for b, c, s in zip(d_box.round(2).tolist(), d_cat.tolist(), score.tolist()):
            results.append({"image_id": img_id, "category_id": c, "bbox": b, "score": s})
    return {"images": images, "annotations": anns, "categories": cats}, results
