"""Reading training output folders: the run record, ``results.json``, ``metrics.json``,
the final EFL state in ``model_final.pth``, the test set's ground truth and the
detections of chosen images (streamed: LVIS-sized files stay out of memory)."""

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..evaluation.lvis_eval import FIXED_KEYS
from ..losses import efl_factors, efl_pos_neg
from ..records import (COMMON, RARE, BadRunFolder, MissingRunFile, RunRecord, need_file,
                       read_json)

__all__ = ["METRICS", "shown_metrics", "Run", "load_run", "read_metrics", "load_gt", "class_groups",
           "loss_state_entry", "efl_params"]

logger = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APr", "APc", "APf")  # box metrics of results.json


def shown_metrics(runs: Iterable["Run"]) -> Tuple[str, ...]:
    """The report's columns: :data:`METRICS`, then APfixed and its groups
    (``efl.evaluation.FIXED_KEYS``) when any run's results hold them (n/a for a run that
    does not)."""
    runs = list(runs)
    return METRICS + tuple(k for k in FIXED_KEYS.values() if any(k in r.bbox for r in runs))


DETECTIONS_FILE = os.path.join("inference", "lvis_instances_results.json")


@dataclass
class Run:
    """One training output folder, as the report needs it."""

    path: str
    model: str  # the model's label, e.g. "focal" or "EFL"
    info: RunRecord  # run_info.json
    bbox: Dict[str, float]  # results.json's bbox metrics (percent; NaN when undefined)
    iteration: int  # the iteration results.json was evaluated at
    metrics: Dict[str, Tuple[np.ndarray, np.ndarray]]  # metrics.json: key -> (iters, values)
    # pos_neg (K,) of runs with loss statistics; gamma (K,) too for EFL runs
    efl_state: Optional[Dict[str, np.ndarray]] = None
    name: str = ""  # "seed 0", or "run 2" without a seed; set by build_report

    @property
    def seed(self) -> Optional[int]:
        seed = self.info.seed
        return seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else None

    @property
    def detections_file(self) -> str:
        return os.path.join(self.path, DETECTIONS_FILE)


def _as_percent(value) -> float:
    """A Detectron2 AP value; undefined ones (LVIS: -1 * 100, NaN, None) become NaN."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return value if math.isfinite(value) and value >= 0 else float("nan")


def read_metrics(path: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Scalars of a Detectron2 ``metrics.json`` (one JSON object per line) as
    key -> (iterations, values), sorted by iteration. Lines that are not JSON (e.g. a line
    cut off by a crash) are skipped; when an iteration appears twice (a resumed run), the
    later line wins."""
    series: Dict[str, Dict[int, float]] = {}
    bad = 0
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            it = record.get("iteration") if isinstance(record, dict) else None
            if not isinstance(it, int):
                continue
            for key, value in record.items():
                if key == "iteration" or isinstance(value, bool):
                    continue
                if not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    series.setdefault(key, {})[it] = float(value)
    if bad:
        logger.warning(f"{path}: skipped {bad} line(s) that are not JSON")
    out = {}
    for key, points in series.items():
        its = np.array(sorted(points), dtype=np.int64)
        out[key] = (its, np.array([points[i] for i in its], dtype=np.float64))
    return out



def loss_state_entry(state: Dict, name: str) -> Optional[np.ndarray]:
    """The loss-state tensor ``name`` (pos_neg, pos_grad, neg_grad) of a checkpoint's model
    state as a float32 array, under either name of the loss submodule (``cls_loss.<name>``
    or ``efl.<name>``, possibly nested, e.g. ``module.cls_loss.pos_neg``); None if absent.
    The one place the report knows those key names."""
    import torch

    from ..checkpoint import rename_legacy_loss_keys

    for key, value in rename_legacy_loss_keys(state).items():
        if key == f"cls_loss.{name}" or key.endswith(f".cls_loss.{name}"):
            return value.detach().to(torch.float32).cpu().numpy().copy()
    return None


def efl_params(info: RunRecord) -> Optional[Dict[str, float]]:
    """gamma_b, scale_factor (and the rest) of a run trained with EFL / EQFL, from its run
    record; None for any other loss. The one place the report reads them."""
    return info.statistics_loss


def _read_efl_state(folder: str, info: RunRecord, required: bool = True
                    ) -> Optional[Dict[str, np.ndarray]]:
    """Final per-class g (and gamma for EFL runs) from ``model_final.pth``. ``required``:
    raise when the checkpoint or the state is missing (EFL runs); otherwise None (a run
    of another loss has statistics only when its tap was on)."""
    import torch

    if not required and not os.path.isfile(os.path.join(folder, "model_final.pth")):
        return None
    path = need_file(
        folder, "model_final.pth",
        "the EFL state plot reads the final per-class state (cls_loss.pos_neg) from it; did "
        "training finish?",
    )
    try:
        try:
            ckpt = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
        except RuntimeError:  # not a zip checkpoint: no mmap
            ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        raise BadRunFolder(f"{path} cannot be read as a weights-only checkpoint: {e}") from e
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise BadRunFolder(f"{path} holds no state dict (expected a dict with 'model')")

    pos_neg, pos, neg = (loss_state_entry(state, n) for n in ("pos_neg", "pos_grad", "neg_grad"))
    if pos_neg is None and pos is not None and neg is not None:
        pos_neg = efl_pos_neg(pos, neg)
    if pos_neg is None:
        if not required:
            return None
        raise BadRunFolder(
            f"{path} has no EFL state (cls_loss.pos_neg) in its model: is {folder} an EFL "
            f"run? (meta_architecture {info.meta_architecture!r})"
        )
    num_classes = info.num_classes
    if num_classes is not None and pos_neg.shape != (num_classes,):
        raise BadRunFolder(
            f"{path}: the loss state pos_neg has shape {pos_neg.shape} but run_info.json says "
            f"num_classes={num_classes}"
        )
    out = {"pos_neg": pos_neg}
    params = efl_params(info)
    if params is not None:  # the focusing factor the loss applied (gamma_b if switched off)
        out["gamma"] = efl_factors(pos_neg, params["gamma_b"], params["scale_factor"],
                                   params.get("focusing", True), params.get("weighting", True))[0]
    if pos is not None and neg is not None:
        out.update(pos_grad=pos, neg_grad=neg)
    return out


def load_run(path: str, model: str = "", need_detections: bool = False) -> Run:
    """Read one output folder.

    Raises:
        MissingRunFile: the folder or a file it needs is missing (message names both).
        BadRunFolder: a file is unreadable or lacks a field.
    """
    path = os.path.normpath(path)
    if not os.path.isdir(path):
        raise MissingRunFile(f"{path} is not a folder: expected a training output folder "
                             "(train.output_dir)")
    info = RunRecord.read(path)
    record = read_json(
        path, "results.json",
        "was the run evaluated? The trainer writes results.json after an evaluation "
        "(train.eval_period, and at the end of training).",
    )
    try:
        bbox = record["results"]["bbox"]
        iteration = int(record.get("iteration", -1))
    except (KeyError, TypeError, ValueError) as e:
        raise BadRunFolder(
            f"{path}/results.json has no box results (expected "
            '{"iteration": N, "results": {"bbox": {"AP": ...}}})'
        ) from e
    if not isinstance(bbox, dict):
        raise BadRunFolder(f"{path}/results.json: results.bbox is not a JSON object")
    bbox = {k: _as_percent(v) for k, v in bbox.items()}
    missing = [m for m in METRICS if m not in bbox]
    if missing:
        raise BadRunFolder(f"{path}/results.json lacks the box metrics {missing} "
                           "(LVISEvaluator reports AP, AP50, AP75, APr, APc, APf)")
    metrics_path = need_file(
        path, "metrics.json",
        "the trainer's JSONWriter writes it during training; was the folder copied without it?",
    )
    run = Run(path=path, model=model, info=info, bbox=bbox, iteration=iteration,
              metrics=read_metrics(metrics_path))
    run.efl_state = _read_efl_state(path, info, required=efl_params(info) is not None)
    if need_detections:
        need_file(path, DETECTIONS_FILE,
                  "LVISEvaluator writes it when it has an output_dir (the trainer sets "
                  "train.output_dir/inference); the detections panel draws this run's boxes")
    return run


def _iter_json_array(path: str, chunk_size: int = 1 << 22) -> Iterator:
    """The elements of a file holding one JSON array, read in chunks (memory stays small
    for LVIS-sized detection files: 300 detections x 20k images)."""
    decoder = json.JSONDecoder()
    skip = re.compile(r"[\s,]*")
    with open(path, encoding="utf-8") as f:
        buf, pos, eof = "", 0, False

        def refill():
            nonlocal buf, pos, eof
            more = f.read(chunk_size)
            eof = not more
            buf, pos = buf[pos:] + more, 0

        refill()
        while True:
            pos = skip.match(buf, pos).end()
            if pos < len(buf) or eof:
                break
            refill()
        if not buf[pos:pos + 1] == "[":
            raise ValueError(f"{path} does not hold a JSON array")
        pos += 1
        while True:
            pos = skip.match(buf, pos).end()
            if pos >= len(buf):
                if eof:
                    raise ValueError(f"{path}: JSON array is not closed (file cut off?)")
                refill()
                continue
            if buf[pos] == "]":
                return
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                if eof:
                    raise ValueError(f"{path}: invalid JSON near character {pos}") from None
                refill()
                continue
            if end >= len(buf) and not eof:  # a number could go on in the next chunk
                refill()
                continue
            yield obj
            pos = end


def load_gt(path: str) -> dict:
    """An LVIS-format JSON as ``categories`` (id -> category), ``images`` (id -> image) and
    ``anns`` (image id -> its annotations)."""
    with open(path) as f:
        data = json.load(f)
    cats = {c["id"]: c for c in data.get("categories", [])}
    anns: Dict[int, list] = {}
    for a in data.get("annotations", []):
        anns.setdefault(a["image_id"], []).append(a)
    return {"categories": cats, "images": {im["id"]: im for im in data.get("images", [])},
            "anns": anns}


def image_path(image_root: str, im: dict) -> str:
    """As Detectron2's load_lvis_json: image_root + coco_url's last two components."""
    if "coco_url" in im:
        folder, name = im["coco_url"].split("/")[-2:]
        return os.path.join(image_root + folder, name)
    return os.path.join(image_root, im["file_name"])


def pick_images(gt: dict, image_root: str, num_images: int) -> Tuple[List[int], int]:
    """Up to ``num_images`` image ids whose file exists, picked greedily: most rare classes
    not shown yet, then most rare classes, then fewest annotations (legible), then id.
    Returns (ids, number of candidate files found missing)."""
    freq = {cid: c.get("frequency", "?") for cid, c in gt["categories"].items()}
    info = []
    for image_id, anns in gt["anns"].items():
        if image_id not in gt["images"] or not anns:
            continue
        cats = {a["category_id"] for a in anns}
        info.append((image_id, {c for c in cats if freq.get(c) == RARE},
                     {c for c in cats if freq.get(c) == COMMON}, len(anns)))
    chosen, covered, missing = [], set(), 0
    while len(chosen) < num_images and info:
        info.sort(key=lambda t: (-len(t[1] - covered), -len(t[1]), -len(t[2] - covered),
                                 t[3], t[0]))
        image_id, rare, common, _ = info.pop(0)
        if not os.path.isfile(image_path(image_root, gt["images"][image_id])):
            missing += 1
            if missing >= 20 and not chosen:
                break  # the images are not there at all
            continue
        chosen.append(image_id)
        covered |= rare | common
    return chosen, missing


def class_groups(gt: Optional[dict], num_classes: Optional[int]) -> Optional[List[str]]:
    """The frequency group of classes 1..K from the ground truth's categories, or None
    when there is no ground truth or a category lacks its ``frequency``."""
    if gt is None:
        return None
    K = num_classes or len(gt["categories"])
    if all(gt["categories"].get(i, {}).get("frequency") for i in range(1, K + 1)):
        return [gt["categories"][i]["frequency"] for i in range(1, K + 1)]
    return None


def collect_detections(path: str, image_ids: Sequence[int],
                        score_thresh: float) -> Tuple[Dict[int, list], Dict[int, float]]:
    """The detections of these images with score >= score_thresh (best first), and the
    highest score of each image (to tell "no detection" from "all below the threshold")."""
    wanted = set(image_ids)
    out: Dict[int, list] = {i: [] for i in image_ids}
    best: Dict[int, float] = {}
    for det in _iter_json_array(path):
        image_id = det.get("image_id")
        if image_id in wanted:
            score = det.get("score", 0.0)
            best[image_id] = max(best.get(image_id, score), score)
            if score >= score_thresh:
                out[image_id].append(det)
    for dets in out.values():
        dets.sort(key=lambda d: -d["score"])
    return out, best
