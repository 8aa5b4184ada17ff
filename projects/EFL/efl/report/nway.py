"""Any number of labelled settings, each trained with several seeds, in one report.

:func:`build_nway_report` reads the output folders of every setting (one per seed, as
:func:`build_report` does for two models) and writes into one report folder:

- ``summary.md`` / ``summary.json``: per setting, the mean and the spread over its runs of
  AP, AP50, AP75, APr, APc, APf (and APfixed with its groups when the results hold it);
  the spread is the sample standard deviation over seeds (n-1). For every setting but the
  baseline: the difference of its mean to the baseline's mean and the spread of that
  difference, the standard error sqrt(s_a^2 / n_a + s_b^2 / n_b) (n/a when a side has one
  run); ``*`` marks a difference larger than twice its standard error. Then every run's
  numbers and the final g per frequency group of the runs that have loss statistics.
- ``ap_by_group.png``: AP / APr / APc / APf per setting (bars: mean, error bars: std over
  seeds, dots: the single runs).
- ``g_vs_instances.png``: final per-class g against the class's training instances, one
  panel per setting whose runs have statistics (focal loss included when its statistics
  tap was on); points: mean over seeds, lines: min-max.
- ``g_over_iterations.png``: the group means of g logged during training (metrics.json),
  one panel per frequency group, a colour per setting, a line style per seed.

As :func:`build_report`, everything is read and checked before anything is written, and the
report is built in a temporary sibling folder renamed into place at the end.
"""

import json
import logging
import math
import os
import shutil
from typing import Dict, List, Mapping, Optional, Sequence

from ..errors import InputError
from ..records import GROUP_NAMES
from ..io import remove_stale_dirs, replace_dir, temporary_dir
from .compare import _check_out_dir, _read_runs
from .nway_plots import draw_nway_plots
from .runs import Run, class_groups, efl_params, load_gt, shown_metrics
from .tables import _group_state, _model_summary, fmt, format_table, jsonable

__all__ = ["NWAY_FILES", "build_nway_report", "difference_to"]

logger = logging.getLogger(__name__)

NWAY_FILES = ("summary.md", "summary.json", "ap_by_group.png", "g_vs_instances.png",
              "g_over_iterations.png")
GENERATOR = "efl.report.nway"
SPREAD = "std over seeds (sample standard deviation, n-1)"
DIFF_SPREAD = ("standard error of the difference of means, sqrt(s_a^2/n_a + s_b^2/n_b) "
               "(n/a when a setting has one run)")
SIGNIFICANT = 2.0  # '*' when |difference| > SIGNIFICANT x its standard error


def build_nway_report(settings: Mapping[str, Sequence[str]], out_dir: str,
                      baseline: Optional[str] = None) -> dict:
    """Write the report comparing ``settings`` (label -> output folders, one per seed; in
    the table's order) into ``out_dir``; differences are to ``baseline`` (default: the
    first label).

    Returns the summary (as in ``summary.json``) plus ``"out_dir"``; ``"table"`` is the
    fixed-width text table that ``summary.md`` opens with.

    Raises:
        InputError: no setting, an empty label or folder list, an unknown baseline, a
            folder given twice, or a run folder that cannot be read (MissingRunFile /
            BadRunFolder name the folder and the file); nothing is written.
    """
    labels = [str(lb) for lb in settings]
    dirs = {str(lb): list(d) for lb, d in settings.items()}
    baseline = labels[0] if baseline is None and labels else baseline
    out_dir = os.path.abspath(out_dir)
    _check_settings(labels, dirs, baseline, out_dir)

    warnings: List[str] = []

    def warn(msg):
        logger.warning(msg)
        warnings.append(msg)

    runs = {label: _read_runs(label, dirs[label], False, warn) for label in labels}
    every = [r for label in labels for r in runs[label]]
    tests = sorted({str(r.info.test_json) for r in every})
    if len(tests) > 1:
        warn(f"the runs were evaluated on different data ({', '.join(tests)}): the comparison "
             "is not like for like")
    machines = sorted({r.info.machine() for r in every if r.info.machine()})
    if len(machines) > 1:
        warn(f"the runs were trained on different machines ({'; '.join(machines)}): their "
             "differences include the machines' rounding, about a seed's spread")
    first = every[0]
    gt = load_gt(first.info.test_json) if first.info.test_json and os.path.isfile(
        first.info.test_json) else None
    if gt is None:
        warn(f"the test JSON {first.info.test_json!r} (run_info.json of {first.path}) does not "
             "exist: no g-vs-instances plot")
    groups = class_groups(gt, first.info.num_classes)
    metrics = shown_metrics(every)

    remove_stale_dirs(out_dir)
    tmp = temporary_dir(out_dir)
    try:
        summary = {
            "generator": GENERATOR,
            "labels": labels,
            "baseline": baseline,
            "test_dataset": " / ".join(sorted({str(r.info.test_dataset) for r in every})),
            "metrics": list(metrics),
            "spread": SPREAD,
            "difference_spread": DIFF_SPREAD,
            "settings": {lb: _setting(lb, runs[lb], metrics, groups) for lb in labels},
            "plots": [],
            "skipped_plots": {},
            "warnings": warnings,
        }
        summary["differences"] = {
            lb: difference_to(summary["settings"][lb], summary["settings"][baseline], metrics)
            for lb in labels if lb != baseline}
        table = nway_table(summary)
        draw_nway_plots(tmp, summary, runs, gt, warn)
        summary["table"] = table
        with open(os.path.join(tmp, "summary.json"), "w") as f:
            json.dump(jsonable(summary), f, indent=2)
        with open(os.path.join(tmp, "summary.md"), "w") as f:
            f.write(nway_md(summary))
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(f"report written to {out_dir}: {', '.join(sorted(os.listdir(out_dir)))}")
    return {**summary, "out_dir": out_dir}


def _check_settings(labels, dirs, baseline, out_dir) -> None:
    if not labels:
        raise InputError("the N-way report needs at least one setting (LABEL=DIR[,DIR...])")
    empty = [lb for lb in labels if not lb.strip() or not dirs[lb]]
    if empty:
        raise InputError(f"setting(s) {empty} have an empty label or no output folder; give "
                         "each setting as LABEL=DIR[,DIR...]")
    if baseline not in labels:
        raise InputError(f"the baseline {baseline!r} is not one of the settings {labels}; "
                         "--baseline takes one of their labels")
    all_dirs = [os.path.abspath(d) for lb in labels for d in dirs[lb]]
    dup = sorted({d for d in all_dirs if all_dirs.count(d) > 1})
    if dup:
        raise InputError(f"folder(s) given more than once: {dup}")
    try:
        _check_out_dir(out_dir, all_dirs, NWAY_FILES)
    except ValueError as e:
        raise InputError(str(e)) from None


def _setting(label: str, runs: List[Run], metrics: Sequence[str], groups) -> dict:
    out = {"label": label, **_model_summary(runs, metrics), "runs": []}
    for run in runs:
        out["runs"].append({
            "name": run.name, "path": run.path, "seed": run.seed, "iteration": run.iteration,
            "max_iter": run.info.max_iter, "meta_architecture": run.info.meta_architecture,
            "efl": efl_params(run.info),
            "bbox": {**dict.fromkeys(metrics, math.nan), **run.bbox},
            "g_groups": _group_state(run, groups), "machine": run.info.machine()})
    return out


def difference_to(setting: dict, base: dict, metrics: Sequence[str]) -> dict:
    """``{"mean": {m: d}, "spread": {m: se}, "exceeds": {m: bool or None}}``: the difference
    of means to the baseline, its standard error, and whether |d| > 2 se."""
    out = {"mean": {}, "spread": {}, "exceeds": {}}
    for m in metrics:
        d = setting["mean"][m] - base["mean"][m]
        se = math.nan
        if setting["n"] > 1 and base["n"] > 1:
            se = math.sqrt(setting["std"][m] ** 2 / setting["n"] + base["std"][m] ** 2 / base["n"])
        out["mean"][m], out["spread"][m] = d, se
        ok = math.isfinite(d) and math.isfinite(se)
        out["exceeds"][m] = bool(abs(d) > SIGNIFICANT * se) if ok else None
    return out


def _cell(mean: float, spread: float, signed: bool = False, mark: str = "") -> str:
    text = fmt(mean, signed=signed)
    if math.isfinite(mean) and spread is not None and math.isfinite(spread):
        text += f" ± {spread:.2f}"
    return text + mark


def nway_table(summary: dict) -> str:
    """Caption line + one row per setting (mean ± std over seeds) and one per difference
    to the baseline (difference ± its standard error, * beyond twice that)."""
    labels, base, metrics = summary["labels"], summary["baseline"], summary["metrics"]
    rows = []
    for lb in labels:
        s = summary["settings"][lb]
        rows.append([lb + (" (baseline)" if lb == base else ""), str(s["n"])]
                    + [_cell(s["mean"][m], s["std"][m]) for m in metrics])
    for lb, diff in summary["differences"].items():
        rows.append([f"{lb} - {base}", ""] + [
            _cell(diff["mean"][m], diff["spread"][m], signed=True,
                  mark="*" if diff["exceeds"][m] else "") for m in metrics])
    table = format_table(["setting", "runs", *metrics], rows, "lr" + "r" * len(metrics))
    caption = (f"Box AP (%) on {summary['test_dataset']}, {len(labels)} settings: mean ± "
               f"std over seeds; differences to {base}: ± standard error, * beyond "
               f"{SIGNIFICANT:g} standard errors")
    return caption + "\n" + table


def nway_md(summary: dict) -> str:
    labels, metrics = summary["labels"], summary["metrics"]
    caption, body = summary["table"].split("\n", 1)
    lines = [f"# {' vs '.join(labels)}: box AP on {summary['test_dataset']}", "",
             f"**{caption}**", "", body, "",
             f"AP in percent as LVISEvaluator reports it (n/a: undefined). Spread of a "
             f"setting: {summary['spread']}. Spread of a difference: "
             f"{summary['difference_spread']}; * marks |difference| > {SIGNIFICANT:g} times "
             "it. With one run per setting there is no spread: a difference then says "
             "nothing about seed noise.", "", "## Runs", ""]
    rows = [[lb, r["name"], f"{r['iteration']}/{r['max_iter']}"]
            + [fmt(r["bbox"][m]) for m in metrics] + [f"`{r['path']}`"]
            for lb in labels for r in summary["settings"][lb]["runs"]]
    lines += [format_table(["setting", "run", "iter", *metrics, "folder"], rows,
                           "llr" + "r" * len(metrics) + "l"), ""]
    states = [(lb, r["name"], r["g_groups"]) for lb in labels
              for r in summary["settings"][lb]["runs"] if r.get("g_groups")]
    if states:
        lines += ["## Final loss state per frequency group", "",
                  "g = the class's accumulated positive / negative gradient (1: balanced); "
                  "gamma = gamma_b + s (1 - g) for EFL runs.", ""]
        rows = [[lb, name, GROUP_NAMES.get(grp, grp), str(st["classes"]), f"{st['g']:.3f}",
                 fmt(st.get("gamma", math.nan))]
                for lb, name, groups in states for grp, st in groups.items()]
        lines += [format_table(["setting", "run", "group", "classes", "mean g", "mean gamma"],
                               rows, "lllrrr"), ""]
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in summary["plots"]]
    lines += [f"- {name}: not drawn ({why})" for name, why in summary["skipped_plots"].items()]
    if summary["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in summary["warnings"]]
    return "\n".join(lines) + "\n"


def settings_of(pairs: Sequence[str]) -> Dict[str, List[str]]:
    """``["focal=DIR1,DIR2", "efl=DIR3"]`` -> ``{"focal": [DIR1, DIR2], "efl": [DIR3]}``
    (InputError naming the bad item)."""
    out: Dict[str, List[str]] = {}
    for item in pairs:
        label, sep, folders = item.partition("=")
        dirs = [d for d in folders.split(",") if d]
        if not sep or not label.strip() or not dirs:
            raise InputError(f"--runs item {item!r} is not LABEL=DIR[,DIR...] (e.g. "
                             "focal=output/focal_s0,output/focal_s1)")
        if label in out:
            raise InputError(f"--runs names the setting {label!r} twice; give each label once "
                             "with all its folders, comma-separated")
        out[label] = dirs
    return out
