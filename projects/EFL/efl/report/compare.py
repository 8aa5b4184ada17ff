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
"""

import json
import logging
import os
import shutil
import uuid
from typing import Dict, List, Sequence

from .plots import draw_plots
from .runs import Run, class_groups, load_gt, load_run, shown_metrics
from .tables import jsonable, main_table, summarize_models, summary_md

__all__ = ["REPORT_FILES", "build_report"]

logger = logging.getLogger(__name__)

REPORT_FILES = (
    "summary.md",
    "summary.json",
    "ap_by_group.png",
    "efl_state_vs_instances.png",
    "loss_curves.png",
    "detections.png",
)
GENERATOR = "efl.report.compare"  # in summary.json: marks a folder as a report


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
    dirs = (list(baseline_dirs), list(efl_dirs))
    labels = tuple(str(x) for x in labels)
    out_dir = os.path.abspath(out_dir)
    _check_arguments(dirs, labels, out_dir)

    # 1. Read and check every input before writing anything.
    warnings: List[str] = []

    def warn(msg):
        logger.warning(msg)
        warnings.append(msg)

    runs = {label: _read_runs(label, d, num_images > 0, warn) for label, d in zip(labels, dirs)}
    test_names = _check_runs(runs, labels, warn)
    first = runs[labels[0]][0]
    metrics = shown_metrics(runs[labels[0]] + runs[labels[1]])
    test_json = first.info.test_json
    gt = None
    if test_json and os.path.isfile(test_json):
        gt = load_gt(test_json)
    else:
        warn(f"the test JSON {test_json!r} (run_info.json of {first.path}) does not exist: "
             "no EFL state plot and no detections panel")

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
            "metrics": list(metrics),
            **summarize_models(runs, labels, class_groups(gt, first.info.num_classes), metrics),
            "plots": [],
            "skipped_plots": {},
            "warnings": warnings,
        }
        table = main_table(summary)
        draw_plots(tmp, summary, runs, gt, first.info.image_root, num_images, score_thresh, warn)

        summary["table"] = table  # the summary last
        with open(os.path.join(tmp, "summary.json"), "w") as f:
            json.dump(jsonable(summary), f, indent=2)
        with open(os.path.join(tmp, "summary.md"), "w") as f:
            f.write(summary_md(summary, table))
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(f"report written to {out_dir}: {', '.join(sorted(os.listdir(out_dir)))}")
    return {**summary, "out_dir": out_dir}


def _check_arguments(dirs: Sequence[List[str]], labels: Sequence[str], out_dir: str) -> None:
    if not all(dirs):
        raise ValueError("build_report needs at least one baseline folder and one EFL folder")
    if len(labels) != 2 or labels[0] == labels[1] or not all(labels):
        raise ValueError(f"labels must be two different names; got {labels}")
    all_dirs = [os.path.abspath(d) for d in dirs[0] + dirs[1]]
    dup = sorted({d for d in all_dirs if all_dirs.count(d) > 1})
    if dup:
        raise ValueError(f"folder(s) given more than once: {dup}")
    _check_out_dir(out_dir, all_dirs)


def _read_runs(label: str, dirs: List[str], detections: bool, warn) -> List[Run]:
    """The runs of one model, named "seed N" (or "run N" without a seed); the first one's
    detections are drawn, so it must have them when ``detections``."""
    runs = [load_run(d, label, need_detections=(j == 0 and detections))
            for j, d in enumerate(dirs)]
    seen: Dict[str, int] = {}
    for j, run in enumerate(runs):
        name = f"seed {run.seed}" if run.seed is not None else f"run {j + 1}"
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            warn(f"{label}: two runs named '{name}' ({run.path}); is it the same run twice?")
            name = f"{name} ({seen[name]})"
        run.name = name
        if run.info.max_iter is not None and run.iteration < run.info.max_iter:
            warn(f"{run.path} was evaluated at iteration {run.iteration} of "
                 f"{run.info.max_iter}: training not finished?")
    return runs


def _check_runs(runs: Dict[str, List[Run]], labels: Sequence[str], warn) -> List[str]:
    """Warn about swapped folders and runs evaluated on different data; returns the
    names of the test datasets."""
    for run in runs[labels[0]]:
        if run.info.statistics_loss:
            warn(f"baseline ({labels[0]}) run {run.path} is an EFL model "
                 f"({run.info.meta_architecture}): are the folders swapped?")
    for run in runs[labels[1]]:
        if not run.info.statistics_loss:
            warn(f"{labels[1]} run {run.path} is not an EFL model "
                 f"({run.info.meta_architecture}): it has no EFL state to plot")
    every = runs[labels[0]] + runs[labels[1]]
    test_names = sorted({str(r.info.test_dataset) for r in every})
    test_jsons = sorted({str(r.info.test_json) for r in every})
    machines = sorted({r.info.machine() for r in every if r.info.machine()})
    if len(machines) > 1:
        warn(f"the runs were trained on different machines ({'; '.join(machines)}): their "
             "difference includes the machines' rounding, about a seed's spread")
    if len(test_names) > 1 or len(test_jsons) > 1:
        warn(f"the runs were evaluated on different data ({', '.join(test_names)}; "
             f"{', '.join(test_jsons)}): the comparison is not like for like")
    return test_names


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
