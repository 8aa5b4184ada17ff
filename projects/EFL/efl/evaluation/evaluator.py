"""The LVIS evaluator the configs use: Detectron2's ``LVISEvaluator`` (same arguments,
same results dict) whose box AP comes from :func:`efl.evaluation.evaluate_lvis`, so it
runs the fast backend by default and can add APfixed."""

import itertools
import json
import logging
import os
from typing import Optional

from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from .lvis_api import LVISEvaluator
from .lvis_eval import BOX_KEYS, FIXED_KEYS, evaluate_lvis

__all__ = ["FastLVISEvaluator"]

logger = logging.getLogger(__name__)


class FastLVISEvaluator(LVISEvaluator):
    """``LVISEvaluator(dataset_name, tasks, distributed, output_dir, max_dets_per_image=)``
    plus:

    Args:
        backend: "fast" (vectorised numpy, lvis-api's numbers) or "lvis" (lvis-api).
        fixed_per_class: e.g. 10000: also report APfixed, APr_fixed, APc_fixed, APf_fixed
            (no per-image cap, the top ``fixed_per_class`` detections per class).
    Box results only use ``evaluate_lvis``; other tasks (segm) go to Detectron2's code.
    """

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *,
                 max_dets_per_image=None, backend: str = "fast",
                 fixed_per_class: Optional[int] = None):
        if backend not in ("fast", "lvis"):
            raise ValueError(f"backend must be 'fast' or 'lvis'; got {backend!r}")
        super().__init__(dataset_name, tasks, distributed, output_dir,
                         max_dets_per_image=max_dets_per_image)
        self._backend, self._fixed_per_class = backend, fixed_per_class

    def _eval_predictions(self, predictions):
        results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = set(self._tasks or self._tasks_from_predictions(results))
        if "bbox" not in tasks:
            return super()._eval_predictions(predictions)
        if len(tasks) > 1:  # masks: Detectron2's path for everything (lvis-api)
            return super()._eval_predictions(predictions)
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        reverse = {v: k for k, v in id_map.items()} if id_map else None
        for r in results:  # contiguous 0..K-1 -> dataset ids, as Detectron2
            r["category_id"] = reverse[r["category_id"]] if reverse else r["category_id"] + 1
        if self._output_dir:
            path = os.path.join(self._output_dir, "lvis_instances_results.json")
            self._logger.info(f"Saving results to {path}")
            with PathManager.open(path, "w") as f:
                f.write(json.dumps(results))
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        if not results:
            self._logger.warning("No predictions from the model!")
            keys = BOX_KEYS + (tuple(FIXED_KEYS.values()) if self._fixed_per_class else ())
            self._results["bbox"] = {k: float("nan") for k in keys}
            return
        max_dets = 300 if self._max_dets_per_image is None else self._max_dets_per_image
        self._logger.info(f"Evaluating boxes with the {self._backend} backend, "
                          f"max detections per image = {max_dets} ...")
        res = evaluate_lvis(self._lvis_api, results, backend=self._backend,
                            max_dets_per_image=max_dets)
        if self._fixed_per_class:
            res.update(evaluate_lvis(self._lvis_api, results, backend=self._backend,
                                     fixed_per_class=self._fixed_per_class))
        self._logger.info("Evaluation results for bbox: \n" + create_small_table(res))
        self._results["bbox"] = res
