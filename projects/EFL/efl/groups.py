"""The LVIS frequency-group names, the names of the loss-state summaries and the per-group
mean (:func:`group_means`), defined once.

The lowest floor of the package: plain Python, importable with nothing else (the losses
use it, so it must not import Detectron2, the run record or any I/O).
"""

__all__ = [
    "FREQUENCY_GROUPS", "RARE", "COMMON", "FREQUENT", "GROUP_NAMES", "ALL_CLASSES",
    "SUMMARY_GROUPS", "EFL_STATS", "efl_summary_key", "group_means",
]

FREQUENCY_GROUPS = ("r", "c", "f")  # LVIS: rare (1-10 training images), common, frequent
RARE, COMMON, FREQUENT = FREQUENCY_GROUPS
GROUP_NAMES = dict(zip(FREQUENCY_GROUPS, ("rare", "common", "frequent")))
ALL_CLASSES = "all"
SUMMARY_GROUPS = (ALL_CLASSES,) + FREQUENCY_GROUPS
EFL_STATS = ("pos_neg", "gamma")  # g and the focusing factor, as the loss names them


def efl_summary_key(stat: str, group: str) -> str:
    """The EventStorage / metrics.json name of a group mean of the EFL state, e.g.
    ``efl/pos_neg_r``: ``stat`` in :data:`EFL_STATS`, ``group`` in :data:`SUMMARY_GROUPS`."""
    return f"efl/{stat}_{group}"


def group_means(values, class_groups, all_classes: bool = False) -> dict:
    """``{group: mean of values over its classes}`` for each group of
    :data:`FREQUENCY_GROUPS` that ``class_groups`` holds, in that order, led by
    ``ALL_CLASSES`` (all K classes) when ``all_classes``. ``values``: K numbers, as a
    sequence, numpy array or torch tensor (read once through ``tolist()``: one copy from a
    GPU); ``class_groups``: K entries, a group name or anything else (no group), or None
    (no groups). Means in float64."""
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    if not isinstance(values, list) or any(isinstance(v, list) for v in values):
        raise ValueError("group_means: values must be one number per class, shape (K,)")
    out = {ALL_CLASSES: sum(values) / len(values)} if all_classes and values else {}
    if class_groups is None:
        return out
    class_groups = list(class_groups)
    if len(class_groups) != len(values):
        raise ValueError(f"group_means: {len(values)} values but {len(class_groups)} class groups")
    for grp in FREQUENCY_GROUPS:
        picked = [v for v, c in zip(values, class_groups) if c == grp]
        if picked:
            out[grp] = sum(picked) / len(picked)
    return out
