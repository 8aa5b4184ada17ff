"""The N-way report's figures (:mod:`.nway`): AP per group per setting, final g per class
against training instances, and the group means of g over the iterations."""

import math
import os
from typing import Dict, List, Optional

import numpy as np

from ..records import ALL_CLASSES, FREQUENCY_GROUPS, GROUP_NAMES, efl_summary_key
from .plots import GROUP_COLORS, GROUP_METRICS, RUN_STYLES, _figure, _plain_log_ticks, _save
from .runs import Run

__all__ = ["draw_nway_plots", "setting_color"]


def setting_color(k: int):
    """The colour of the k-th setting (matplotlib's tab10, cycled)."""
    from matplotlib import colormaps

    return colormaps["tab10"](k % 10)


def draw_nway_plots(folder: str, summary: dict, runs: Dict[str, List[Run]],
                    gt: Optional[dict], warn) -> None:
    """Draw the figures into ``folder``; record the drawn ones in ``summary["plots"]`` and
    why the others were not in ``summary["skipped_plots"]``."""
    plot_ap_groups(os.path.join(folder, "ap_by_group.png"), summary, runs)
    summary["plots"].append("ap_by_group.png")
    for name, draw in (("g_vs_instances.png", lambda p: plot_g_vs_instances(p, summary, runs, gt)),
                       ("g_over_iterations.png", lambda p: plot_g_over_iterations(p, summary, runs))):
        why = draw(os.path.join(folder, name))
        if why:
            summary["skipped_plots"][name] = why
        else:
            summary["plots"].append(name)


def plot_ap_groups(path: str, summary: dict, runs: Dict[str, List[Run]]) -> None:
    labels = summary["labels"]
    n = len(labels)
    fig = _figure(max(7.5, 1.2 * n + 4), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(GROUP_METRICS))
    width = 0.8 / n
    top = 1.0
    for k, label in enumerate(labels):
        s = summary["settings"][label]
        means = np.array([s["mean"][m] for m in GROUP_METRICS], dtype=float)
        stds = np.nan_to_num(np.array([s["std"][m] for m in GROUP_METRICS], dtype=float))
        pos = x + (k - (n - 1) / 2) * width
        ax.bar(pos, np.nan_to_num(means), width, color=setting_color(k), alpha=0.85,
               yerr=stds if s["n"] > 1 else None, capsize=3, label=f"{label} ({s['n']} runs)")
        for j, m in enumerate(GROUP_METRICS):
            vals = [r.bbox[m] for r in runs[label] if math.isfinite(r.bbox[m])]
            ax.scatter(np.full(len(vals), pos[j]), vals, s=9, color="black", zorder=3)
            top = max([top, *vals, np.nan_to_num(means[j]) + stds[j]])
    ax.set_xticks(x)
    ax.set_xticklabels(["AP (all)", "APr (rare)", "APc (common)", "APf (frequent)"])
    ax.set_ylabel("box AP (%)")
    ax.set_ylim(0, top * 1.15)
    ax.set_title(f"AP by frequency group on {summary['test_dataset']}; bars: mean, error "
                 "bars: std over seeds, dots: single runs", fontsize=9.5)
    ax.legend(fontsize=7.5, loc="upper left", ncol=max(1, n // 4))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_g_vs_instances(path: str, summary: dict, runs: Dict[str, List[Run]],
                        gt: Optional[dict]) -> Optional[str]:
    """Returns None, or why the plot was not drawn."""
    with_state = [lb for lb in summary["labels"]
                  if any(r.efl_state is not None for r in runs[lb])]
    if not with_state:
        return "no run has loss statistics (cls_loss.pos_neg in model_final.pth)"
    if gt is None:
        return "no test JSON"
    K = next(r for r in runs[with_state[0]] if r.efl_state is not None).efl_state["pos_neg"].size
    cats = [gt["categories"].get(i) for i in range(1, K + 1)]
    if any(c is None for c in cats) or len(gt["categories"]) != K:
        return f"the test JSON has {len(gt['categories'])} categories, the loss state {K}"
    key = next((k for k in ("instance_count", "image_count") if all(k in c for c in cats)), None)
    if key is None:
        return "the test JSON's categories carry no instance_count / image_count"
    counts = np.array([c[key] for c in cats], dtype=float)
    counts = np.where(counts <= 0, 0.5, counts)
    groups = np.array([c.get("frequency", "?") for c in cats])
    ncols = min(3, len(with_state))
    nrows = math.ceil(len(with_state) / ncols)
    fig = _figure(5.0 * ncols, 4.2 * nrows + 0.4)
    for p, label in enumerate(with_state):
        ax = fig.add_subplot(nrows, ncols, p + 1)
        stated = [r for r in runs[label] if r.efl_state is not None]
        g = np.stack([r.efl_state["pos_neg"] for r in stated])
        mean = g.mean(0)
        for grp in FREQUENCY_GROUPS + ("?",):
            mask = groups == grp
            if not mask.any():
                continue
            if len(stated) > 1:
                ax.vlines(counts[mask], g.min(0)[mask], g.max(0)[mask],
                          color=GROUP_COLORS[grp], alpha=0.35, linewidth=1)
            ax.scatter(counts[mask], mean[mask], s=12, color=GROUP_COLORS[grp], alpha=0.8,
                       edgecolors="none", label=f"{GROUP_NAMES.get(grp, 'no group')} "
                                                f"(mean {mean[mask].mean():.2f})")
        ax.axhline(1.0, color="gray", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        _plain_log_ticks(ax, counts)
        ax.set_ylim(-0.03, _g_top(g.max()))
        ax.set_xlabel(f"training {key.replace('_', ' ')} (log)")
        ax.set_ylabel("final g = pos / neg gradient")
        of = f" of {len(runs[label])}" if len(stated) < len(runs[label]) else ""
        ax.set_title(f"{label} ({len(stated)}{of} run{'s' if len(stated) > 1 or of else ''} "
                     "with statistics)", fontsize=9.5)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Final per-class g against training data; points: mean over seeds, lines: "
                 "min-max", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return None


def _g_top(g_max: float) -> float:
    """The y-axis top for g: 1.05, or above the largest g (EQLv2's g can exceed 1)."""
    return max(1.05, float(g_max) * 1.05) if math.isfinite(g_max) else 1.05


def plot_g_over_iterations(path: str, summary: dict, runs: Dict[str, List[Run]]) -> Optional[str]:
    """Returns None, or why the plot was not drawn."""
    groups = [g for g in FREQUENCY_GROUPS
              if any(efl_summary_key("pos_neg", g) in r.metrics for rs in runs.values() for r in rs)]
    groups = groups or [ALL_CLASSES]
    if not any(efl_summary_key("pos_neg", g) in r.metrics
               for g in groups for rs in runs.values() for r in rs):
        return "no run's metrics.json logs the group means of g"
    fig = _figure(4.6 * len(groups), 4.2)
    for p, grp in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), p + 1)
        key = efl_summary_key("pos_neg", grp)
        for k, label in enumerate(summary["labels"]):
            for j, run in enumerate(runs[label]):
                if key in run.metrics:
                    its, vals = run.metrics[key]
                    ax.plot(its, vals, color=setting_color(k), linewidth=1.2,
                            linestyle=RUN_STYLES[j % len(RUN_STYLES)],
                            label=label if j == 0 else None)
        ax.set_ylim(-0.03, _g_top(max((max(run.metrics[key][1], default=0.0)
                                            for rs in runs.values() for run in rs
                                            if key in run.metrics), default=0.0)))
        ax.set_xlabel("iteration")
        ax.set_ylabel("group mean of g")
        ax.set_title(f"{GROUP_NAMES.get(grp, 'all classes')}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("g of each frequency group during training (colour: setting, line style: "
                 "seed)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return None
