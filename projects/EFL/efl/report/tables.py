"""The numbers of the report: per-model statistics over runs, the final EFL state per
frequency group, the fixed-width tables and ``summary.md``."""

import math
from collections import Counter
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..activity import focal_like_note, watched_classes_g
from ..groups import group_means
from ..records import ALL_CLASSES, GROUP_NAMES, RARE
from .runs import METRICS, Run, efl_params

__all__ = ["format_table"]


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


def summarize_models(runs: Dict[str, List[Run]], labels: Sequence[str],
                     groups: Optional[List[str]], metrics: Sequence[str] = METRICS) -> dict:
    """``{"models": {label: statistics and runs}, "difference": {metric: EFL - baseline of
    the means}}``; ``groups``: the r/c/f group of every class (None: unknown); ``metrics``:
    the columns (``runs.shown_metrics``), NaN for a run whose results lack one."""
    models = {}
    for label in labels:
        models[label] = {"label": label, **_model_summary(runs[label], metrics), "runs": []}
        for run in runs[label]:
            efl_groups = _group_state(run, groups)
            models[label]["runs"].append({
                "name": run.name, "path": run.path, "seed": run.seed,
                "iteration": run.iteration, "max_iter": run.info.max_iter,
                "meta_architecture": run.info.meta_architecture,
                "cls_loss": run.info.cls_loss, "bbox": {**dict.fromkeys(metrics, math.nan), **run.bbox},
                "efl_groups": efl_groups, "efl_note": _focal_like(run, efl_groups),
                "machine": run.info.machine(),
                "label": label,
            })
    base, efl = (models[lb] for lb in labels)
    return {"models": models,
            "difference": {m: efl["mean"][m] - base["mean"][m] for m in metrics}}


def _model_summary(runs: List[Run], metrics: Sequence[str]) -> dict:
    per_metric = {m: _stats([r.bbox.get(m, math.nan) for r in runs]) for m in metrics}
    return {
        "n": len(runs),
        **{s: {m: per_metric[m][s] for m in metrics} for s in ("mean", "std", "min", "max")},
    }


def _group_state(run: Run, groups: Optional[List[str]]) -> Optional[dict]:
    if run.efl_state is None:
        return None
    g, gamma = run.efl_state["pos_neg"], run.efl_state.get("gamma")
    groups = groups if groups is not None and len(groups) == g.size else None
    sizes = {ALL_CLASSES: int(g.size), **Counter(groups or ())}
    g_means = group_means(g, groups, all_classes=True)
    # gamma: EFL runs only; other losses' statistics have no focusing factor
    gamma_means = group_means(gamma, groups, all_classes=True) if gamma is not None else None
    return {grp: {"classes": sizes[grp], "g": g_means[grp],
                  **({"gamma": gamma_means[grp]} if gamma_means else {})} for grp in g_means}


def _focal_like(run: Run, efl_groups: Optional[dict]) -> Optional[str]:
    """:func:`efl.activity.focal_like_note` on the run's final state: the rare group's mean
    g, or without groups the least frequent classes'."""
    params = efl_params(run.info)
    if run.efl_state is None or params is None:
        return None
    rare_g = efl_groups[RARE]["g"] if efl_groups and RARE in efl_groups else None
    classes, g = watched_classes_g(rare_g, run.efl_state["pos_neg"], run.efl_state.get("pos_grad"))
    return focal_like_note(g, classes, params["gamma_b"], params["scale_factor"],
                           f"at the end of training (iteration {run.iteration})",
                           params.get("focusing", True), params.get("weighting", True))


def fmt(x: float, signed: bool = False) -> str:
    """An AP value with two decimals; "n/a" when undefined."""
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _table_rows(models: List[dict], labels: Sequence[str], metrics: Sequence[str]) -> List[List[str]]:
    rows = []
    for model in models:
        first = True
        for run in model["runs"]:
            rows.append([model["label"] if first else "", run["name"], str(run["iteration"])]
                        + [fmt(run["bbox"][m]) for m in metrics])
            first = False
        if model["n"] > 1:
            rows.append(["", f"mean of {model['n']}", ""]
                        + [fmt(model["mean"][m]) for m in metrics])
            for stat in ("std", "min", "max"):
                rows.append(["", stat, ""] + [fmt(model[stat][m]) for m in metrics])
    base, efl = models
    diff_name = "diff of means" if base["n"] > 1 or efl["n"] > 1 else "difference"
    rows.append([f"{labels[1]} - {labels[0]}", diff_name, ""]
                + [fmt(efl["mean"][m] - base["mean"][m], signed=True) for m in metrics])
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


def main_table(summary: dict) -> str:
    """The caption line and the AP table of every run, the statistics and the difference."""
    labels = summary["labels"]
    models = [summary["models"][labels[0]], summary["models"][labels[1]]]
    metrics = summary["metrics"]
    header = ["model", "run", "iter", *metrics]
    table = format_table(header, _table_rows(models, labels, metrics), "llr" + "r" * len(metrics))
    caption = (f"Box AP (%) on {summary['test_dataset']}: {labels[0]} ({models[0]['n']} "
               f"run{'s' if models[0]['n'] > 1 else ''}) vs {labels[1]} ({models[1]['n']} "
               f"run{'s' if models[1]['n'] > 1 else ''})")
    return caption + "\n" + table


def summary_md(summary: dict, table: str) -> str:
    """``summary.md``: the AP table, the final EFL state per group, the runs, the plots."""
    labels = summary["labels"]
    caption, body = table.split("\n", 1)
    lines = [f"# {labels[0]} vs {labels[1]}: box AP on {summary['test_dataset']}", "",
             f"**{caption}**", "", body, "",
             "AP values in percent, as LVISEvaluator reports them (n/a: undefined, e.g. no "
             "class of that group in the evaluation set). iter: the iteration the run was "
             "evaluated at. With several runs: std is the sample standard deviation (n-1), "
             f"min/max over the runs. The last row is {labels[1]} minus {labels[0]} of the "
             "means." + (" APfixed (and its r/c/f parts): AP with a fixed budget of "
                         "detections per class instead of per image (Dave et al., 2021)."
                         if "APfixed" in summary["metrics"] else ""), ""]
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
                             f"{st['g']:.3f}", fmt(st.get("gamma", math.nan))])
        lines += [format_table(header, rows, "lllrrr"), ""]
    lines += ["## Runs", ""]
    rows = []
    for lb in labels:
        for r in summary["models"][lb]["runs"]:
            rows.append([lb, r["name"], r["meta_architecture"] or "?",
                         f"{r['iteration']}/{r['max_iter']}", r.get("machine") or "not recorded",
                         f"`{r['path']}`"])
    lines += [format_table(["model", "run", "architecture", "evaluated at / max_iter",
                            "trained on (CPU, kernels, threads)", "folder"], rows, "lllrll"),
              "", "Runs repeat bitwise on the same processor type and thread count; on "
              "another machine the rounding of CPU kernels differs and, over a long "
              "training, shifts the numbers by about a seed's spread "
              "(docs/reproducibility.md).", ""]
    notes = [f"- {r['label']} {r['name']}: {r['efl_note']}" for lb in labels
             for r in summary["models"][lb]["runs"] if r.get("efl_note")]
    if notes and "efl_state_vs_instances.png" not in summary["plots"]:
        lines += notes + [""]
    lines += ["## Plots", ""]
    for name in summary["plots"]:
        lines.append(f"![{name}]({name})")
        if name == "efl_state_vs_instances.png" and notes:
            lines += [""] + notes + [""]
    for name, why in summary["skipped_plots"].items():
        lines.append(f"- {name}: not drawn ({why})")
    if summary["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in summary["warnings"]]
    return "\n".join(lines) + "\n"


def jsonable(obj):
    """NaN/inf -> None (strict JSON), numpy -> Python."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
