"""Compare two sets of detections (eager vs exported) as sets.

Class-wise NMS and top-k may order detections of equal score differently, so detections
are matched, not compared row by row: within a class, each reference detection is paired
with the closest (box L-inf distance) unpaired candidate whose score is within
``match_score`` and box within ``match_box``. The largest differences over the pairs are
then what a tolerance is checked against.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["Parity", "compare_detections"]


@dataclass
class Parity:
    """Result of :func:`compare_detections` (box differences in pixels)."""

    num_reference: int
    num_other: int
    matched: int
    max_score_diff: float  # over matched pairs, 0 if none
    max_box_diff: float  # largest |coordinate difference| over matched pairs
    unmatched_reference: int  # not counting ties at the top-k / max-detections cut
    unmatched_other: int

    def ok(self, score_tol: float = 1e-4, box_tol: float = 1e-2) -> bool:
        return (self.unmatched_reference == 0 and self.unmatched_other == 0
                and self.max_score_diff <= score_tol and self.max_box_diff <= box_tol)

    def __str__(self):
        return (f"{self.matched}/{self.num_reference} detections matched "
                f"({self.num_other} exported; unmatched {self.unmatched_reference} / "
                f"{self.unmatched_other}), max |score diff| {self.max_score_diff:.2e}, "
                f"max |box diff| {self.max_box_diff:.2e} px")


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def compare_detections(reference: Sequence, other: Sequence, *, match_score: float = 1e-2,
                       match_box: float = 1.0, max_detections: Optional[int] = None,
                       tie_tol: float = 1e-4) -> Parity:
    """Match ``other`` to ``reference``; each is (boxes (N, 4), scores (N,), classes (N,)).

    When both lists hold ``max_detections`` (both were cut), a detection left unmatched
    whose score is within ``tie_tol`` of the lowest score of its list is not counted as a
    mismatch: the cut may keep either of two tied detections.
    """
    rb, rs, rc = (_numpy(t) for t in reference)
    ob, os_, oc = (_numpy(t) for t in other)
    used = np.zeros(len(os_), dtype=bool)
    score_diffs, box_diffs, unmatched_ref = [], [], []
    for i in np.argsort(-rs, kind="stable"):
        candidates = np.flatnonzero(
            (~used) & (oc == rc[i]) & (np.abs(os_ - rs[i]) <= match_score)
        )
        if len(candidates):
            dist = np.abs(ob[candidates] - rb[i]).max(axis=1)
            j = candidates[np.argmin(dist)]
            if dist.min() <= match_box:
                used[j] = True
                score_diffs.append(abs(float(os_[j]) - float(rs[i])))
                box_diffs.append(float(dist.min()))
                continue
        unmatched_ref.append(i)
    unmatched_other = np.flatnonzero(~used)
    if max_detections and len(rs) == len(os_) == max_detections:
        unmatched_ref = [i for i in unmatched_ref if rs[i] > rs.min() + tie_tol]
        unmatched_other = [j for j in unmatched_other if os_[j] > os_.min() + tie_tol]
    return Parity(
        num_reference=len(rs), num_other=len(os_), matched=len(score_diffs),
        max_score_diff=max(score_diffs, default=0.0), max_box_diff=max(box_diffs, default=0.0),
        unmatched_reference=len(unmatched_ref), unmatched_other=len(unmatched_other),
    )
