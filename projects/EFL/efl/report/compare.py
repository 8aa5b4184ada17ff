"""Compare a focal-loss baseline with EFL from training output folders.

:func:`build_report` reads the folders the trainer (:mod:`efl.engine.trainer`) writes,
one per training run (e.g. one per seed), and writes into one report folder:

- ``summary.md`` / ``summary.json``: box AP, AP50, AP75, APr, APc, APf of every run, the
  mean, std (sample, n-1), min and max over each model's runs, and EFL - baseline of the
  means; the final EFL state per frequency group; the runs' folders; any warnings.
- ``ap_by_group.png``: AP / APr / APc / APf bars of both models (error bars: std over runs).
- ``efl_state_vs_instances.png``: final per-class g (= pos_neg) and gamma of the EFL runs
  against the class's number of training instances.
- ``loss_curves.png``: total_loss and loss_cls of every run, and the EFL group-mean g.
- ``detections.png``: a few validation images (chosen deterministically, preferring rare
  classes) with the ground truth and each model's detections above a score threshold.

Input files per folder: ``run_info.json``, ``results.json``, ``metrics.json``;
``model_final.pth`` for EFL runs; ``inference/lvis_instances_results.json`` for the first
run of each model (the one whose detections are drawn). A missing file raises
:class:`MissingRunFile` (a ``FileNotFoundError``) naming the folder and the file before
anything is written. The report is built in a temporary sibling folder and renamed into
place at the end, so a report folder is either complete or absent.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no display, the
process's backend is left alone).
"""

import json
import logging
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError

__all__ = [
    "MissingRunFile",
    "BadRunFolder",
    "Run",
    "load_run",
    "read_metrics",
    "format_table",
    "build_report",
]

logger = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APr", "APc", "APf")
GROUP_METRICS = ("AP", "APr", "APc", "APf")
GROUPS = ("r", "c", "f")
GROUP_NAMES = {"r": "rare", "c": "common", "f": "frequent"}
GROUP_COLORS = {"r": "#d62728", "c": "#ff7f0e", "f": "#1f77b4", "?": "#7f7f7f"}
MODEL_COLORS = ("#4c72b0", "#dd8452")  # baseline, EFL
RUN_STYLES = ("-", "--", ":", "-.")
REPORT_FILES = (
    "summary.md",
    "summary.json",
    "ap_by_group.png",
    "efl_state_vs_instances.png",
    "loss_curves.png",
    "detections.png",
)
GENERATOR = "efl.report.compare"
DETECTIONS_FILE = os.path.join("inference", "lvis_instances_results.json")
MAX_DETS_PER_PANEL = 20
DPI = 110


class MissingRunFile(InputError, FileNotFoundError):
    """An output folder lacks a file the report needs."""


class BadRunFolder(InputError, ValueError):
    """An output folder's file cannot be used (bad JSON, missing field, wrong shape)."""


# ----------------------------------------------------------------------------- reading


@dataclass
class Run:
    """One training output folder, as the report needs it."""

    path: str
    model: str  # the model's label, e.g. "focal" or "EFL"
    info: dict  # run_info.json
    bbox: Dict[str, float]  # results.json's bbox metrics (percent; NaN when undefined)
    iteration: int  # the iteration results.json was evaluated at
    metrics: Dict[str, Tuple[np.ndarray, np.ndarray]]  # metrics.json: key -> (iters, values)
    efl_state: Optional[Dict[str, np.ndarray]] = None  # pos_neg, gamma (K,) of EFL runs
    name: str = ""  # "seed 0", or "run 2" without a seed; set by build_report

    @property
    def seed(self) -> Optional[int]:
        seed = self.info.get("seed")
        return seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else None

    @property
    def detections_file(self) -> str:
        return os.path.join(self.path, DETECTIONS_FILE)


def _need(folder: str, name: str, hint: str) -> str:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise MissingRunFile(f"{folder} has no {name}: {hint}")
    return path


def _read_json(folder: str, name: str, hint: str):
    path = _need(folder, name, hint)
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRunFolder(f"{path} is not valid JSON ({e}); was it written completely?") from e


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


def _read_efl_state(folder: str, info: dict) -> Dict[str, np.ndarray]:
    """Final per-class g and gamma from ``model_final.pth``."""
    import torch

    path = _need(
        folder, "model_final.pth",
        "the EFL state plot reads the final per-class state (efl.pos_neg) from it; did "
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

    def find(name):
        for key, value in state.items():
            if key == f"efl.{name}" or key.endswith(f".efl.{name}"):
                return value.detach().to(torch.float32).cpu().numpy().copy()
        return None

    pos_neg, pos, neg = find("pos_neg"), find("pos_grad"), find("neg_grad")
    if pos_neg is None and pos is not None and neg is not None:
        pos_neg = np.clip(pos / (neg + 1e-10), 0, 1)
    if pos_neg is None:
        raise BadRunFolder(
            f"{path} has no EFL state (efl.pos_neg) in its model: is {folder} an EFL run? "
            f"(meta_architecture {info.get('meta_architecture')!r})"
        )
    num_classes = info.get("num_classes")
    if num_classes is not None and pos_neg.shape != (num_classes,):
        raise BadRunFolder(
            f"{path}: efl.pos_neg has shape {pos_neg.shape} but run_info.json says "
            f"num_classes={num_classes}"
        )
    params = info["efl"]
    gamma = params["gamma_b"] + params["scale_factor"] * (1 - pos_neg)
    out = {"pos_neg": pos_neg, "gamma": gamma}
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
    info = _read_json(
        path, "run_info.json",
        "is it an output folder of train_net.py (the efl Trainer writes run_info.json when "
        "it starts)?",
    )
    record = _read_json(
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
    if not isinstance(info, dict) or not isinstance(bbox, dict):
        raise BadRunFolder(f"{path}: run_info.json / results.json do not hold JSON objects")
    bbox = {k: _as_percent(v) for k, v in bbox.items()}
    missing = [m for m in METRICS if m not in bbox]
    if missing:
        raise BadRunFolder(f"{path}/results.json lacks the box metrics {missing} "
                           "(LVISEvaluator reports AP, AP50, AP75, APr, APc, APf)")
    metrics_path = _need(
        path, "metrics.json",
        "the trainer's JSONWriter writes it during training; was the folder copied without it?",
    )
    run = Run(path=path, model=model, info=info, bbox=bbox, iteration=iteration,
              metrics=read_metrics(metrics_path))
    if info.get("efl"):
        run.efl_state = _read_efl_state(path, info)
    if need_detections:
        _need(path, DETECTIONS_FILE,
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


# ----------------------------------------------------------------------------- statistics


def _stats(values: Sequence[float]) -> Dict[str, float]:
    v = np.array([x for x in values if math.isfinite(x)], dtype=np.float64)
    nan = float("nan")
    if v.size == 0:
        return {"mean": nan, "std": nan, "min": nan, "max": nan, "n": 0}
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else nan,
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(v.size),
    }


def _model_summary(runs: List[Run]) -> dict:
    per_metric = {m: _stats([r.bbox[m] for r in runs]) for m in METRICS}
    return {
        "n": len(runs),
        **{s: {m: per_metric[m][s] for m in METRICS} for s in ("mean", "std", "min", "max")},
    }


def _group_state(run: Run, groups: Optional[List[str]]) -> Optional[dict]:
    if run.efl_state is None:
        return None
    g, gamma = run.efl_state["pos_neg"], run.efl_state["gamma"]
    out = {"all": {"classes": int(g.size), "g": float(g.mean()), "gamma": float(gamma.mean())}}
    if groups is not None and len(groups) == g.size:
        arr = np.array(groups)
        for grp in GROUPS:
            mask = arr == grp
            if mask.any():
                out[grp] = {"classes": int(mask.sum()), "g": float(g[mask].mean()),
                            "gamma": float(gamma[mask].mean())}
    return out


# ----------------------------------------------------------------------------- the table


def _fmt(x: float, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _table_rows(models: List[dict], labels: Sequence[str]) -> List[List[str]]:
    rows = []
    for model in models:
        first = True
        for run in model["runs"]:
            rows.append([model["label"] if first else "", run["name"], str(run["iteration"])]
                        + [_fmt(run["bbox"][m]) for m in METRICS])
            first = False
        if model["n"] > 1:
            rows.append(["", f"mean of {model['n']}", ""]
                        + [_fmt(model["mean"][m]) for m in METRICS])
            for stat in ("std", "min", "max"):
                rows.append(["", stat, ""] + [_fmt(model[stat][m]) for m in METRICS])
    base, efl = models
    diff_name = "diff of means" if base["n"] > 1 or efl["n"] > 1 else "difference"
    rows.append([f"{labels[1]} - {labels[0]}", diff_name, ""]
                + [_fmt(efl["mean"][m] - base["mean"][m], signed=True) for m in METRICS])
    return rows


def format_table(header: Sequence[str], rows: List[List[str]], align: str) -> str:
    """A Markdown pipe table with padded, fixed-width columns (readable as plain text).
    ``align``: one character per column, "l" or "r"."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells):
        return "| " + " | ".join(
            c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align)
        ) + " |"

    rule = "|" + "|".join(
        (":" + "-" * (w + 1)) if a == "l" else ("-" * (w + 1) + ":") for w, a in zip(widths, align)
    ) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows])


def _main_table(summary: dict) -> str:
    labels = summary["labels"]
    models = [summary["models"][labels[0]], summary["models"][labels[1]]]
    header = ["model", "run", "iter", *METRICS]
    table = format_table(header, _table_rows(models, labels), "llr" + "r" * len(METRICS))
    caption = (f"Box AP (%) on {summary['test_dataset']}: {labels[0]} ({models[0]['n']} "
               f"run{'s' if models[0]['n'] > 1 else ''}) vs {labels[1]} ({models[1]['n']} "
               f"run{'s' if models[1]['n'] > 1 else ''})")
    return caption + "\n" + table


# ----------------------------------------------------------------------------- ground truth


def _load_gt(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    cats = {c["id"]: c for c in data.get("categories", [])}
    anns: Dict[int, list] = {}
    for a in data.get("annotations", []):
        anns.setdefault(a["image_id"], []).append(a)
    return {"categories": cats, "images": {im["id"]: im for im in data.get("images", [])},
            "anns": anns}


def _image_path(image_root: str, im: dict) -> str:
    """As Detectron2's load_lvis_json: image_root + coco_url's last two components."""
    if "coco_url" in im:
        folder, name = im["coco_url"].split("/")[-2:]
        return os.path.join(image_root + folder, name)
    return os.path.join(image_root, im["file_name"])


def _pick_images(gt: dict, image_root: str, num_images: int) -> Tuple[List[int], int]:
    """Up to ``num_images`` image ids whose file exists, picked greedily: most rare classes
    not shown yet, then most rare classes, then fewest annotations (legible), then id.
    Returns (ids, number of candidate files found missing)."""
    freq = {cid: c.get("frequency", "?") for cid, c in gt["categories"].items()}
    info = []
    for image_id, anns in gt["anns"].items():
        if image_id not in gt["images"] or not anns:
            continue
        cats = {a["category_id"] for a in anns}
        info.append((image_id, {c for c in cats if freq.get(c) == "r"},
                     {c for c in cats if freq.get(c) == "c"}, len(anns)))
    chosen, covered, missing = [], set(), 0
    while len(chosen) < num_images and info:
        info.sort(key=lambda t: (-len(t[1] - covered), -len(t[1]), -len(t[2] - covered),
                                 t[3], t[0]))
        image_id, rare, common, _ = info.pop(0)
        if not os.path.isfile(_image_path(image_root, gt["images"][image_id])):
            missing += 1
            if missing >= 20 and not chosen:
                break  # the images are not there at all
            continue
        chosen.append(image_id)
        covered |= rare | common
    return chosen, missing


def _collect_detections(path: str, image_ids: Sequence[int],
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


def _iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    bx1, by1, bx2, by2 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


# ----------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> None:
    fig.savefig(path, dpi=DPI)


def _plot_ap_by_group(path: str, summary: dict, runs: Dict[str, List[Run]]) -> None:
    labels = summary["labels"]
    fig = _figure(7.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(GROUP_METRICS))
    width = 0.38
    top = 0.0
    for k, label in enumerate(labels):
        model = summary["models"][label]
        means = np.array([model["mean"][m] for m in GROUP_METRICS], dtype=float)
        stds = np.array([model["std"][m] for m in GROUP_METRICS], dtype=float)
        pos = x + (k - 0.5) * width
        heights = np.nan_to_num(means, nan=0.0)
        has_err = model["n"] > 1
        ax.bar(pos, heights, width, color=MODEL_COLORS[k], alpha=0.85,
               label=f"{label} ({model['n']} run{'s' if model['n'] > 1 else ''})",
               yerr=np.nan_to_num(stds, nan=0.0) if has_err else None,
               capsize=4 if has_err else 0, error_kw={"elinewidth": 1.2})
        if has_err:  # the individual runs
            for j, m in enumerate(GROUP_METRICS):
                vals = [r.bbox[m] for r in runs[label] if math.isfinite(r.bbox[m])]
                ax.scatter(np.full(len(vals), pos[j]), vals, s=12, color="black", zorder=3,
                           label="single runs" if (k == 0 and j == 0) else None)
        for j in range(len(GROUP_METRICS)):
            upper = heights[j] + (np.nan_to_num(stds[j]) if has_err else 0)
            maxrun = max([r.bbox[GROUP_METRICS[j]] for r in runs[label]
                          if math.isfinite(r.bbox[GROUP_METRICS[j]])], default=0.0)
            y = max(upper, maxrun)
            top = max(top, y)
            ax.annotate(_fmt(means[j]), (pos[j], y), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(["AP (all)", "APr (rare)", "APc (common)", "APf (frequent)"])
    ax.set_ylabel("box AP (%)")
    ax.set_ylim(0, max(1.0, top) * 1.18)
    n_max = max(summary["models"][lb]["n"] for lb in labels)
    note = "; bars: mean, error bars: std over runs" if n_max > 1 else ""
    ax.set_title(f"{labels[0]} vs {labels[1]} on {summary['test_dataset']}{note}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _plain_log_ticks(ax, values) -> None:
    """Log-axis tick labels as plain numbers (1, 10, 100; and 2, 5, 20 ... when the axis
    spans less than two decades) instead of 2 x 10^0."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    narrow = np.log10(max(values) / min(values)) < 2
    ax.xaxis.set_minor_formatter(
        FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else "") if narrow
        else NullFormatter())


def _plot_efl_state(path: str, efl_runs: List[Run], gt: dict, label: str) -> Optional[str]:
    """Returns None, or why the plot was skipped."""
    runs = [r for r in efl_runs if r.efl_state is not None]
    if not runs:
        return f"no {label} run has an EFL state (run_info.json 'efl' is null)"
    cats = [gt["categories"].get(i) for i in range(1, runs[0].efl_state["pos_neg"].size + 1)]
    if any(c is None for c in cats) or len(gt["categories"]) != len(cats):
        return (f"the test JSON has {len(gt['categories'])} categories but the EFL state has "
                f"{len(cats)} classes")
    key = "instance_count" if all("instance_count" in c for c in cats) else (
        "image_count" if all("image_count" in c for c in cats) else None)
    if key is None:
        return "the test JSON's categories carry no instance_count / image_count"
    counts = np.array([c[key] for c in cats], dtype=float)
    zero = counts <= 0
    counts = np.where(zero, 0.5, counts)
    groups = np.array([c.get("frequency", "?") for c in cats])
    g_all = np.stack([r.efl_state["pos_neg"] for r in runs])
    gamma_all = np.stack([r.efl_state["gamma"] for r in runs])
    params = runs[0].info["efl"]
    n = len(runs)
    size = 14 if len(cats) <= 200 else 6

    fig = _figure(12, 4.8)
    for col, (vals, name) in enumerate(((g_all, "g = pos / neg gradient (final)"),
                                        (gamma_all, "gamma = gamma_b + s (1 - g) (final)"))):
        ax = fig.add_subplot(1, 2, col + 1)
        mean = vals.mean(0)
        for grp in GROUPS + ("?",):
            mask = groups == grp
            if not mask.any():
                continue
            if n > 1:
                ax.vlines(counts[mask], vals.min(0)[mask], vals.max(0)[mask],
                          color=GROUP_COLORS[grp], alpha=0.35, linewidth=1)
            ax.scatter(counts[mask], mean[mask], s=size, color=GROUP_COLORS[grp], alpha=0.8,
                       edgecolors="none",
                       label=f"{GROUP_NAMES.get(grp, 'no group')} ({int(mask.sum())} classes, "
                             f"mean {mean[mask].mean():.2f})")
        ax.set_xscale("log")
        _plain_log_ticks(ax, counts)
        ax.set_xlabel(f"training {key.replace('_', ' ')} of the class (log)"
                      + (" (0 shown at 0.5)" if zero.any() else ""))
        ax.set_ylabel(name)
        if col == 0:
            ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
            ax.set_ylim(-0.03, 1.05)
        else:
            ax.axhline(params["gamma_b"], color="gray", linestyle=":", linewidth=1)
            ax.set_ylim(params["gamma_b"] - 0.3, params["gamma_b"] + params["scale_factor"] + 0.3)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7.5, loc="best")
    seeds = ", ".join(r.name for r in runs)
    spread = "; points: mean over runs, lines: min-max" if n > 1 else ""
    fig.suptitle(f"{label} final per-class state vs training data ({seeds}{spread}); "
                 f"gamma_b={params['gamma_b']:g}, s={params['scale_factor']:g}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return None


def _plot_loss_curves(path: str, runs: Dict[str, List[Run]], labels: Sequence[str]) -> None:
    efl_g = [r for r in runs[labels[1]] + runs[labels[0]]
             if any(k.startswith("efl/pos_neg_") for k in r.metrics)]
    panels = [("total_loss", "total loss"), ("loss_cls", "classification loss (loss_cls)")]
    ncols = len(panels) + (1 if efl_g else 0)
    fig = _figure(5.2 * ncols, 4.3)
    for p, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, ncols, p + 1)
        drawn = False
        for k, label in enumerate(labels):
            for j, run in enumerate(runs[label]):
                if key not in run.metrics:
                    continue
                its, vals = run.metrics[key]
                ax.plot(its, vals, color=MODEL_COLORS[k], linestyle=RUN_STYLES[j % len(RUN_STYLES)],
                        linewidth=1.3, label=f"{label} {run.name}")
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, f"no '{key}' in metrics.json", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_xlabel("iteration")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7.5)
    if efl_g:
        from matplotlib.lines import Line2D

        ax = fig.add_subplot(1, ncols, ncols)
        shown_groups = []
        for j, run in enumerate(efl_g):
            groups = [g for g in GROUPS if f"efl/pos_neg_{g}" in run.metrics] or ["all"]
            for grp in groups:
                its, vals = run.metrics[f"efl/pos_neg_{grp}"]
                ax.plot(its, vals, color=GROUP_COLORS.get(grp, "black"),
                        linestyle=RUN_STYLES[j % len(RUN_STYLES)], linewidth=1.3)
                if grp not in shown_groups:
                    shown_groups.append(grp)
        # compact legend: colour = group, line style = run
        handles = [Line2D([], [], color=GROUP_COLORS.get(g, "black"), label=GROUP_NAMES.get(g, g))
                   for g in shown_groups]
        if len(efl_g) > 1:
            handles += [Line2D([], [], color="black", linestyle=RUN_STYLES[j % len(RUN_STYLES)],
                               label=f"{run.model} {run.name}") for j, run in enumerate(efl_g)]
        ax.set_xlabel("iteration")
        ax.set_ylabel("group mean of g")
        ax.set_ylim(-0.03, 1.05)
        ax.set_title("EFL state during training: mean g per group", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize=7.5)
    fig.suptitle(f"Training curves (Detectron2's smoothed values); {labels[1]}'s loss_cls "
                 "carries class weights w >= 1, so its scale differs from focal loss",
                 fontsize=9.5)
    fig.tight_layout()
    _save(fig, path)


def _draw_boxes(ax, items, gt: dict, W: int, H: int) -> None:
    """items: (bbox, category_id, score or None, matched)."""
    from matplotlib.patches import Rectangle

    for bbox, cid, score, matched in items:
        cat = gt["categories"].get(cid, {})
        color = GROUP_COLORS.get(cat.get("frequency", "?"), GROUP_COLORS["?"])
        x, y, w, h = bbox
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=color, linewidth=1.6,
                               linestyle="-" if matched else "--"))
        name = cat.get("name", str(cid))
        text = name if score is None else f"{name} {score:.2f}"
        inside = y < 0.07 * H  # no room above the box: write inside it
        right = x > 0.5 * W  # anchor at the box's right edge so the text stays in the image
        ax.text(x + w if right else x, y, text, fontsize=6.5, color="white",
                ha="right" if right else "left",
                va="top" if inside else "bottom", clip_on=True,
                bbox={"facecolor": color, "alpha": 0.8, "pad": 0.8, "edgecolor": "none"})


def _plot_detections(path: str, gt: dict, image_root: str, image_ids: List[int],
                     panels: List[Tuple[str, Dict[int, list], Dict[int, float]]],
                     score_thresh: float) -> None:
    from PIL import Image

    ncols = 1 + len(panels)
    nrows = len(image_ids)
    fig = _figure(3.9 * ncols, 3.9 * nrows + 0.6)
    for row, image_id in enumerate(image_ids):
        im = gt["images"][image_id]
        with Image.open(_image_path(image_root, im)) as img:
            pixels = np.asarray(img.convert("RGB"))
        H, W = pixels.shape[:2]
        anns = gt["anns"].get(image_id, [])
        gt_items = [(a["bbox"], a["category_id"], None, True) for a in anns]
        rare = sorted({gt["categories"].get(a["category_id"], {}).get("name", "?") for a in anns
                       if gt["categories"].get(a["category_id"], {}).get("frequency") == "r"})
        ax = fig.add_subplot(nrows, ncols, row * ncols + 1)
        ax.imshow(pixels)
        _draw_boxes(ax, gt_items, gt, W, H)
        title = f"image {image_id}: ground truth ({len(anns)})"
        if rare:
            title += "\nrare: " + ", ".join(rare[:3]) + (" ..." if len(rare) > 3 else "")
        ax.set_title(title, fontsize=8)
        for col, (name, dets_by_image, best) in enumerate(panels):
            dets = dets_by_image.get(image_id, [])
            shown = dets[:MAX_DETS_PER_PANEL]
            items = []
            for d in shown:
                matched = any(a["category_id"] == d["category_id"]
                              and _iou(a["bbox"], d["bbox"]) >= 0.5 for a in anns)
                items.append((d["bbox"], d["category_id"], d["score"], matched))
            ax = fig.add_subplot(nrows, ncols, row * ncols + col + 2)
            ax.imshow(pixels)
            _draw_boxes(ax, items, gt, W, H)
            count = (f"top {len(shown)} of {len(dets)}" if len(dets) > len(shown)
                     else f"{len(dets)}")
            hits = sum(1 for it in items if it[3])
            if dets:
                second = f"{hits} match a GT box of their class"
            elif image_id in best:
                second = f"(highest score {best[image_id]:.3f})"
            else:
                second = "(no detection at all)"
            ax.set_title(f"{name}: {count} detections >= {score_thresh:g}\n{second}",
                         fontsize=8)
        for a in fig.axes[row * ncols:(row + 1) * ncols]:
            a.set_xlim(0, W)
            a.set_ylim(H, 0)
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle("Box colour: frequency group of the class (red rare, orange common, blue "
                 "frequent). Solid: a GT box of that class with IoU >= 0.5; dashed: none.",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    _save(fig, path)


# ----------------------------------------------------------------------------- writing


def _jsonable(obj):
    """NaN/inf -> None (strict JSON), numpy -> Python."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _check_out_dir(out_dir: str, run_dirs: Sequence[str]) -> None:
    for d in run_dirs:
        d = os.path.abspath(d)
        if d == out_dir or d.startswith(out_dir + os.sep):
            raise ValueError(f"the report folder {out_dir} would replace the run folder {d}; "
                             "choose another --out")
    if not os.path.lexists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir} exists and is not a folder; choose another report folder")
    entries = set(os.listdir(out_dir))
    if not entries or entries <= set(REPORT_FILES):
        return
    try:
        with open(os.path.join(out_dir, "summary.json")) as f:
            if json.load(f).get("generator") == GENERATOR:
                return
    except (OSError, ValueError, AttributeError):
        pass
    raise ValueError(
        f"{out_dir} exists and holds files that are not a report ({sorted(entries)[:5]}); "
        "it would be replaced: choose another report folder"
    )


def _replace_dir(tmp: str, out_dir: str) -> None:
    if os.path.lexists(out_dir):
        old = f"{out_dir}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)


def _summary_md(summary: dict, table: str) -> str:
    labels = summary["labels"]
    caption, body = table.split("\n", 1)
    lines = [f"# {labels[0]} vs {labels[1]}: box AP on {summary['test_dataset']}", "",
             f"**{caption}**", "", body, "",
             "AP values in percent, as LVISEvaluator reports them (n/a: undefined, e.g. no "
             "class of that group in the evaluation set). iter: the iteration the run was "
             "evaluated at. With several runs: std is the sample standard deviation (n-1), "
             f"min/max over the runs. The last row is {labels[1]} minus {labels[0]} of the "
             "means.", ""]
    states = [(r["label"], r["name"], r["efl_groups"]) for lb in labels
              for r in summary["models"][lb]["runs"] if r.get("efl_groups")]
    if states:
        lines += ["## Final EFL state per frequency group", "",
                  "g = accumulated positive / negative gradient of the class (1: balanced); "
                  "gamma = gamma_b + s (1 - g).", ""]
        header = ["model", "run", "group", "classes", "mean g", "mean gamma"]
        rows = []
        for label, name, groups in states:
            for grp, st in groups.items():
                rows.append([label, name, GROUP_NAMES.get(grp, grp), str(st["classes"]),
                             f"{st['g']:.3f}", f"{st['gamma']:.2f}"])
        lines += [format_table(header, rows, "lllrrr"), ""]
    lines += ["## Runs", ""]
    rows = []
    for lb in labels:
        for r in summary["models"][lb]["runs"]:
            rows.append([lb, r["name"], r["meta_architecture"] or "?",
                         f"{r['iteration']}/{r['max_iter']}", f"`{r['path']}`"])
    lines += [format_table(["model", "run", "architecture", "evaluated at / max_iter", "folder"],
                           rows, "lllrl"), ""]
    lines += ["## Plots", ""]
    for name in summary["plots"]:
        lines.append(f"![{name}]({name})")
    for name, why in summary["skipped_plots"].items():
        lines.append(f"- {name}: not drawn ({why})")
    if summary["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in summary["warnings"]]
    return "\n".join(lines) + "\n"


def build_report(
    baseline_dirs: Sequence[str],
    efl_dirs: Sequence[str],
    out_dir: str,
    labels: Sequence[str] = ("focal", "EFL"),
    num_images: int = 4,
    score_thresh: float = 0.3,
) -> dict:
    """Write the comparison report of two models (one or more runs each) into ``out_dir``.

    Args:
        baseline_dirs / efl_dirs: training output folders of each model (e.g. one per seed).
        out_dir: the report folder; replaced if it holds a previous report, refused if it
            holds anything else.
        labels: names of the two models in the table and plots.
        num_images: validation images in ``detections.png`` (0: no detections panel).
        score_thresh: detections drawn have at least this score.

    Returns:
        The summary (as in ``summary.json``) plus ``"table"``: the fixed-width text table
        (also in ``summary.md``) and ``"out_dir"``.

    Raises:
        MissingRunFile (FileNotFoundError): a folder lacks a file; nothing is written.
        BadRunFolder / ValueError: unusable input; nothing is written.
    """
    baseline_dirs, efl_dirs = list(baseline_dirs), list(efl_dirs)
    labels = tuple(str(x) for x in labels)
    if not baseline_dirs or not efl_dirs:
        raise ValueError("build_report needs at least one baseline folder and one EFL folder")
    if len(labels) != 2 or labels[0] == labels[1] or not all(labels):
        raise ValueError(f"labels must be two different names; got {labels}")
    all_dirs = [os.path.abspath(d) for d in baseline_dirs + efl_dirs]
    dup = sorted({d for d in all_dirs if all_dirs.count(d) > 1})
    if dup:
        raise ValueError(f"folder(s) given more than once: {dup}")
    out_dir = os.path.abspath(out_dir)
    _check_out_dir(out_dir, all_dirs)

    # 1. Read and check every input before writing anything.
    warnings: List[str] = []

    def warn(msg):
        logger.warning(msg)
        warnings.append(msg)

    runs: Dict[str, List[Run]] = {}
    for label, dirs in zip(labels, (baseline_dirs, efl_dirs)):
        runs[label] = [load_run(d, label, need_detections=(j == 0 and num_images > 0))
                       for j, d in enumerate(dirs)]
        seen: Dict[str, int] = {}
        for j, run in enumerate(runs[label]):
            name = f"seed {run.seed}" if run.seed is not None else f"run {j + 1}"
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                warn(f"{label}: two runs named '{name}' ({run.path}); is it the same run twice?")
                name = f"{name} ({seen[name]})"
            run.name = name
            if run.info.get("max_iter") is not None and run.iteration < run.info["max_iter"]:
                warn(f"{run.path} was evaluated at iteration {run.iteration} of "
                     f"{run.info['max_iter']}: training not finished?")
    for run in runs[labels[0]]:
        if run.info.get("efl"):
            warn(f"baseline ({labels[0]}) run {run.path} is an EFL model "
                 f"({run.info.get('meta_architecture')}): are the folders swapped?")
    for run in runs[labels[1]]:
        if not run.info.get("efl"):
            warn(f"{labels[1]} run {run.path} is not an EFL model "
                 f"({run.info.get('meta_architecture')}): it has no EFL state to plot")
    every = runs[labels[0]] + runs[labels[1]]
    test_names = sorted({str(r.info.get("test_dataset")) for r in every})
    test_jsons = sorted({str(r.info.get("test_json")) for r in every})
    if len(test_names) > 1 or len(test_jsons) > 1:
        warn(f"the runs were evaluated on different data ({', '.join(test_names)}; "
             f"{', '.join(test_jsons)}): the comparison is not like for like")
    first = runs[labels[0]][0]
    test_json, image_root = first.info.get("test_json"), first.info.get("image_root")

    # 2. Build in a temporary sibling folder; rename at the end.
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        summary = {
            "generator": GENERATOR,
            "labels": list(labels),
            "test_dataset": test_names[0] if len(test_names) == 1 else " / ".join(test_names),
            "test_json": test_json,
            "metrics": list(METRICS),
            "models": {},
            "difference": {},
            "plots": [],
            "skipped_plots": {},
            "warnings": warnings,
        }
        gt = None
        if test_json and os.path.isfile(test_json):
            gt = _load_gt(test_json)
        else:
            warn(f"the test JSON {test_json!r} (run_info.json of {first.path}) does not exist: "
                 "no EFL state plot and no detections panel")
        groups = None
        if gt is not None:
            K = first.info.get("num_classes") or len(gt["categories"])
            if all(gt["categories"].get(i, {}).get("frequency") for i in range(1, K + 1)):
                groups = [gt["categories"][i]["frequency"] for i in range(1, K + 1)]

        for label in labels:
            model = {"label": label, **_model_summary(runs[label]), "runs": []}
            for run in runs[label]:
                model["runs"].append({
                    "name": run.name, "path": run.path, "seed": run.seed,
                    "iteration": run.iteration, "max_iter": run.info.get("max_iter"),
                    "meta_architecture": run.info.get("meta_architecture"),
                    "efl": run.info.get("efl"), "bbox": dict(run.bbox),
                    "efl_groups": _group_state(run, groups), "label": label,
                })
            summary["models"][label] = model
        base, efl = (summary["models"][lb] for lb in labels)
        summary["difference"] = {m: efl["mean"][m] - base["mean"][m] for m in METRICS}
        table = _main_table(summary)

        # plots
        _plot_ap_by_group(os.path.join(tmp, "ap_by_group.png"), summary, runs)
        summary["plots"].append("ap_by_group.png")

        why = "no test JSON" if gt is None else _plot_efl_state(
            os.path.join(tmp, "efl_state_vs_instances.png"), runs[labels[1]], gt, labels[1])
        if why:
            summary["skipped_plots"]["efl_state_vs_instances.png"] = why
            if gt is not None:
                warn(f"efl_state_vs_instances.png not drawn: {why}")
        else:
            summary["plots"].append("efl_state_vs_instances.png")

        _plot_loss_curves(os.path.join(tmp, "loss_curves.png"), runs, labels)
        summary["plots"].append("loss_curves.png")

        why = None
        if num_images <= 0:
            why = "num_images=0"
        elif gt is None:
            why = "no test JSON"
        elif not image_root or not os.path.isdir(image_root):
            why = f"the image folder {image_root!r} does not exist"
        else:
            image_ids, missing = _pick_images(gt, image_root, num_images)
            if missing:
                warn(f"{missing} chosen validation image file(s) under {image_root} do not exist"
                     + (" (skipped)" if image_ids else ""))
            if not image_ids:
                why = f"no validation image with annotations found under {image_root}"
            else:
                panels = []
                for label in labels:
                    run = runs[label][0]
                    dets, best = _collect_detections(run.detections_file, image_ids,
                                                     score_thresh)
                    panels.append((f"{label} {run.name}", dets, best))
                _plot_detections(os.path.join(tmp, "detections.png"), gt, image_root,
                                 image_ids, panels, score_thresh)
                summary["plots"].append("detections.png")
                summary["detection_images"] = image_ids
                summary["score_thresh"] = score_thresh
        if why:
            summary["skipped_plots"]["detections.png"] = why
            if why != "num_images=0" and gt is not None:
                warn(f"detections.png not drawn: {why}")

        # the summary last
        summary["table"] = table
        with open(os.path.join(tmp, "summary.json"), "w") as f:
            json.dump(_jsonable(summary), f, indent=2)
        with open(os.path.join(tmp, "summary.md"), "w") as f:
            f.write(_summary_md(summary, table))
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(f"report written to {out_dir}: {', '.join(sorted(os.listdir(out_dir)))}")
    return {**summary, "out_dir": out_dir}
