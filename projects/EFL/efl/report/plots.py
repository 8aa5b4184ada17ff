"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot,
no display; the process's backend is left alone)."""

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..records import (ALL_CLASSES, FREQUENCY_GROUPS, GROUP_NAMES, RARE, SUMMARY_GROUPS,
                       efl_summary_key)
from .runs import Run, collect_detections, efl_params, image_path, pick_images
from .tables import fmt

__all__ = ["draw_plots"]

GROUP_METRICS = ("AP", "APr", "APc", "APf")
GROUP_COLORS = {**dict(zip(FREQUENCY_GROUPS, ("#d62728", "#ff7f0e", "#1f77b4"))), "?": "#7f7f7f"}
MODEL_COLORS = ("#4c72b0", "#dd8452")  # baseline, EFL
RUN_STYLES = ("-", "--", ":", "-.")
MAX_DETS_PER_PANEL = 20
DPI = 110


def draw_plots(folder: str, summary: dict, runs: Dict[str, List[Run]], gt: Optional[dict],
               image_root: Optional[str], num_images: int, score_thresh: float, warn) -> None:
    """Draw the report's figures into ``folder``; record in ``summary`` the ones drawn
    (``plots``) and why the others were not (``skipped_plots``). ``gt``: the test set's
    ground truth (:func:`efl.report.runs.load_gt`) or None."""
    labels = summary["labels"]
    plot_ap_by_group(os.path.join(folder, "ap_by_group.png"), summary, runs)
    summary["plots"].append("ap_by_group.png")

    why = "no test JSON" if gt is None else plot_efl_state(
        os.path.join(folder, "efl_state_vs_instances.png"), runs[labels[1]], gt, labels[1])
    if why:
        summary["skipped_plots"]["efl_state_vs_instances.png"] = why
        if gt is not None:
            warn(f"efl_state_vs_instances.png not drawn: {why}")
    else:
        summary["plots"].append("efl_state_vs_instances.png")

    plot_loss_curves(os.path.join(folder, "loss_curves.png"), runs, labels)
    summary["plots"].append("loss_curves.png")

    why = None
    if num_images <= 0:
        why = "num_images=0"
    elif gt is None:
        why = "no test JSON"
    elif not image_root or not os.path.isdir(image_root):
        why = f"the image folder {image_root!r} does not exist"
    else:
        image_ids, missing = pick_images(gt, image_root, num_images)
        if missing:
            warn(f"{missing} chosen validation image file(s) under {image_root} do not exist"
                 + (" (skipped)" if image_ids else ""))
        if not image_ids:
            why = f"no validation image with annotations found under {image_root}"
        else:
            panels = []
            for label in labels:
                run = runs[label][0]
                dets, best = collect_detections(run.detections_file, image_ids, score_thresh)
                panels.append((f"{label} {run.name}", dets, best))
            plot_detections(os.path.join(folder, "detections.png"), gt, image_root,
                            image_ids, panels, score_thresh)
            summary["plots"].append("detections.png")
            summary["detection_images"] = image_ids
            summary["score_thresh"] = score_thresh
    if why:
        summary["skipped_plots"]["detections.png"] = why
        if why != "num_images=0" and gt is not None:
            warn(f"detections.png not drawn: {why}")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> None:
    fig.savefig(path, dpi=DPI)


def plot_ap_by_group(path: str, summary: dict, runs: Dict[str, List[Run]]) -> None:
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
            ax.annotate(fmt(means[j]), (pos[j], y), xytext=(0, 3), textcoords="offset points",
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


def plot_efl_state(path: str, efl_runs: List[Run], gt: dict, label: str) -> Optional[str]:
    """Returns None, or why the plot was skipped."""
    runs = [r for r in efl_runs if r.efl_state is not None and "gamma" in r.efl_state]
    if not runs:
        return f"no {label} run has an EFL state (run_info.json 'cls_loss' has no EFL state)"
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
    params = efl_params(runs[0].info)
    n = len(runs)
    size = 14 if len(cats) <= 200 else 6

    fig = _figure(12, 4.8)
    for col, (vals, name) in enumerate(((g_all, "g = pos / neg gradient (final)"),
                                        (gamma_all, "gamma = gamma_b + s (1 - g) (final)"))):
        ax = fig.add_subplot(1, 2, col + 1)
        mean = vals.mean(0)
        for grp in FREQUENCY_GROUPS + ("?",):
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


def plot_loss_curves(path: str, runs: Dict[str, List[Run]], labels: Sequence[str]) -> None:
    efl_g = [r for r in runs[labels[1]] + runs[labels[0]]
             if any(efl_summary_key("pos_neg", g) in r.metrics for g in SUMMARY_GROUPS)]
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
            groups = [g for g in FREQUENCY_GROUPS if efl_summary_key("pos_neg", g) in run.metrics]
            for grp in groups or [ALL_CLASSES]:
                its, vals = run.metrics[efl_summary_key("pos_neg", grp)]
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
        ax.set_title("gradient statistics during training: mean g per group", fontsize=10)
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


def plot_detections(path: str, gt: dict, image_root: str, image_ids: List[int],
                     panels: List[Tuple[str, Dict[int, list], Dict[int, float]]],
                     score_thresh: float) -> None:
    from PIL import Image

    ncols = 1 + len(panels)
    nrows = len(image_ids)
    fig = _figure(3.9 * ncols, 3.9 * nrows + 0.6)
    for row, image_id in enumerate(image_ids):
        im = gt["images"][image_id]
        with Image.open(image_path(image_root, im)) as img:
            pixels = np.asarray(img.convert("RGB"))
        H, W = pixels.shape[:2]
        anns = gt["anns"].get(image_id, [])
        gt_items = [(a["bbox"], a["category_id"], None, True) for a in anns]
        rare = sorted({gt["categories"].get(a["category_id"], {}).get("name", "?") for a in anns
                       if gt["categories"].get(a["category_id"], {}).get("frequency") == RARE})
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


def _iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    bx1, by1, bx2, by2 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0
