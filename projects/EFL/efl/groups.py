"""The LVIS frequency-group names and the names of the loss-state summaries, defined once.

The lowest floor of the package: plain Python, importable with nothing else (the losses
use it, so it must not import Detectron2, the run record or any I/O).
"""

__all__ = [
    "FREQUENCY_GROUPS", "RARE", "COMMON", "FREQUENT", "GROUP_NAMES", "ALL_CLASSES",
    "SUMMARY_GROUPS", "EFL_STATS", "efl_summary_key",
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
