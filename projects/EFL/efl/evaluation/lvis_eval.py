"""``evaluate_lvis``: LVIS box AP (lvis-api's protocol) with a choice of backend, and
APfixed.

- ``backend="fast"``: :mod:`efl.evaluation.fast_lvis` (vectorised numpy, same numbers as
  lvis-api within 1e-4 absolute on every key, tested);
- ``backend="lvis"``: lvis-api's ``LVISResults`` + ``LVISEval`` (the reference).

APfixed (Dave et al., "Evaluating Large-Vocabulary Object Detectors: The Devil is in the
Details", 2021; the LVIS 2021 challenge metric): no per-image cap; instead the
``fixed_per_class`` (10,000) highest-scoring detections of each class over the whole
dataset. The capped protocol lets a detector trade its rare classes' low-scoring
detections for frequent ones image by image; APfixed does not.
"""

import json
import logging
import os
from typing import Dict, Optional, Sequence, Union

import numpy as np

from .fast_lvis import evaluate_lvis_fast

__all__ = ["evaluate_lvis", "top_per_class", "BOX_KEYS", "FIXED_KEYS"]

logger = logging.getLogger(__name__)

BOX_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
FIXED_KEYS = {"AP": "APfixed", "APr": "APr_fixed", "APc": "APc_fixed", "APf": "APf_fixed"}
BACKENDS = ("fast", "lvis")


def top_per_class(results: Sequence[dict], k: int) -> list:
    """The ``k`` highest-scoring detections of each class (ties: the earlier), in the
    input order."""
    n = len(results)
    cat = np.fromiter((r["category_id"] for r in results), np.int64, n)
    score = np.fromiter((r["score"] for r in results), np.float64, n)
    order = np.lexsort((-score, cat))
    c = cat[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]]) if n else np.zeros(0, int)
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    keep = np.sort(order[rank < k])
    return [results[i] for i in keep]


def _load_json(path: str):
    with open(path) as f:
        return json.load(f)


def _lvis_api(gt, results: Sequence[dict], max_dets: int) -> Dict[str, float]:
    """lvis-api's numbers (fractions). Note: lvis-api adds ``area``, ``id`` and
    ``segmentation`` to the result dicts in place."""
    from lvis import LVIS, LVISEval, LVISResults

    from .lvis_api import lvis_numpy_aliases

    if isinstance(gt, str):
        gt = LVIS(gt)
    elif isinstance(gt, dict):
        api = LVIS.__new__(LVIS)
        api.logger, api.dataset = logging.getLogger("lvis.lvis"), gt
        api._create_index()
        gt = api
    with lvis_numpy_aliases():
        lvis_eval = LVISEval(gt, LVISResults(gt, list(results), max_dets=max_dets), "bbox")
        lvis_eval.run()
    res = lvis_eval.get_results()
    return {k: float(res[k]) for k in BOX_KEYS}


def evaluate_lvis(
    gt_json,
    results: Union[str, Sequence[dict]],
    *,
    backend: str = "fast",
    max_dets_per_image: Optional[int] = 300,
    fixed_per_class: Optional[int] = None,
) -> Dict[str, float]:
    """LVIS box evaluation, percent (as Detectron2 prints it; -100 where undefined).

    Args:
        gt_json: LVIS-format ground truth: a path, the parsed dict, or an ``lvis.LVIS``.
        results: COCO-format detections ``{"image_id", "category_id" (dataset id),
            "bbox" [x, y, w, h], "score"}``, or the path of a JSON list of them.
        backend: "fast" (vectorised numpy) or "lvis" (lvis-api).
        max_dets_per_image: the per-image cap (LVIS: 300; None or -1: none).
        fixed_per_class: if set (APfixed: 10000), no per-image cap but the top
            ``fixed_per_class`` detections of each class over the dataset; the keys are then
            APfixed, APr_fixed, APc_fixed, APf_fixed.
    Returns:
        AP AP50 AP75 APs APm APl APr APc APf (or the four APfixed keys) -> float.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if isinstance(results, (str, os.PathLike)):
        results = _load_json(os.fspath(results))
    max_dets = -1 if max_dets_per_image is None else int(max_dets_per_image)
    if fixed_per_class is not None:
        results, max_dets = top_per_class(results, int(fixed_per_class)), -1
    if backend == "lvis":
        res = _lvis_api(gt_json, results, max_dets)
    else:
        if isinstance(gt_json, (str, os.PathLike)):
            gt_json = _load_json(os.fspath(gt_json))
        elif not isinstance(gt_json, dict):  # an lvis.LVIS
            gt_json = gt_json.dataset
        res = evaluate_lvis_fast(gt_json, results, max_dets)
    res = {k: 100.0 * v for k, v in res.items()}
    if fixed_per_class is not None:
        return {fixed: res[key] for key, fixed in FIXED_KEYS.items()}
    return res
