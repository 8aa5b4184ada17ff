"""Is EFL doing anything? When the rare classes' g (the ratio of accumulated positive to
negative gradient, :func:`efl.losses.efl_pos_neg`) stays close to 1, EFL's focusing
factor gamma = gamma_b + s (1 - g) stays close to gamma_b and its weight gamma / gamma_b
close to 1: EFL then trains almost as focal loss. That is what the data asks for, not a
bug: g drops far below 1 only when a class's few positives face many negatives (many
anchors per image, the class in few images), as LVIS's rare classes do.

The trainer says so once, after a warm-up (:class:`efl.engine.activity.EFLActivityCheck`),
from the running state; the comparison report (``efl.report``) says so beside its state
plot, from the final state. Both use :func:`focal_like_note` for the test and the words.
"""

from typing import Optional, Tuple

import numpy as np

from .losses import efl_factors

__all__ = ["FOCAL_LIKE_G", "WARMUP_FRACTION", "LEAST_FREQUENT_FRACTION", "RARE_LABEL",
           "LEAST_FREQUENT_LABEL", "least_frequent_g", "watched_classes_g", "focal_like_note"]

# g >= 0.9: EFL uses less than a tenth of its range of extra focusing (gamma between
# gamma_b at g = 1 and gamma_b + s at g = 0) on the classes it exists for. The range is
# the principle: the threshold holds for any gamma_b and s. (LVIS rare classes: g well
# below 0.5 after the first epoch, gamma near gamma_b + s.)
FOCAL_LIKE_G = 0.9
# The trainer checks once, after a fifth of the schedule: the LR warm-up is long over
# (Detectron2 recipes: 1000 of 90k-180k iterations; the CPU demo: 200 of 2000) and g, a
# ratio of sums over all steps so far, is no longer dominated by the first steps, when the
# classifier sits at its prior probability and the negatives' gradients are near zero.
# A fifth, not the end: on a days-long run the user should hear it early.
WARMUP_FRACTION = 0.2
# Without frequency groups: the tenth of the classes (at least one) with the least
# accumulated positive gradient, among those that had any, stand for the rare ones.
LEAST_FREQUENT_FRACTION = 0.1

RARE_LABEL = "rare"
LEAST_FREQUENT_LABEL = "least frequent (the tenth of the classes with the least positive gradient)"


def least_frequent_g(pos_neg, pos_grad) -> Optional[float]:
    """Mean g of the least frequent classes (:data:`LEAST_FREQUENT_FRACTION` of those with
    a positive gradient, ranked by it); ``pos_neg``, ``pos_grad``: (K,) arrays or tensors.
    None when no class had a positive yet."""
    g = np.asarray(pos_neg, dtype=np.float64).reshape(-1)
    pos = np.asarray(pos_grad, dtype=np.float64).reshape(-1)
    seen = np.flatnonzero(pos > 0)
    if seen.size == 0:
        return None
    n = max(1, int(round(LEAST_FREQUENT_FRACTION * seen.size)))
    least = seen[np.argsort(pos[seen], kind="stable")[:n]]
    return float(g[least].mean())


def watched_classes_g(rare_g: Optional[float], pos_neg=None,
                      pos_grad=None) -> Tuple[str, Optional[float]]:
    """The classes EFL exists for and their mean g, as ``(label, g)`` for
    :func:`focal_like_note`: the rare group's (:data:`RARE_LABEL`, ``rare_g``) when it is
    known (not None), else the least frequent classes' (:data:`LEAST_FREQUENT_LABEL`,
    :func:`least_frequent_g` of the (K,) ``pos_neg`` and ``pos_grad``; g None when either
    is None or no class had a positive yet)."""
    if rare_g is not None:
        return RARE_LABEL, float(rare_g)
    if pos_neg is None or pos_grad is None:
        return LEAST_FREQUENT_LABEL, None
    return LEAST_FREQUENT_LABEL, least_frequent_g(pos_neg, pos_grad)


def focal_like_note(g: Optional[float], classes: str, gamma_b: float, scale_factor: float,
                    when: str, focusing: bool = True, weighting: bool = True) -> Optional[str]:
    """The plain-words note when ``g`` (mean g of the ``classes`` classes, e.g.
    :data:`RARE_LABEL`) is at least :data:`FOCAL_LIKE_G`; None otherwise, and None for EFL
    with both components off (``focusing``, ``weighting``: it is focal loss by choice).
    ``when``: e.g. "after 400 of 2000 iterations" or "at the end of training"."""
    if g is None or not g >= FOCAL_LIKE_G or not (focusing or weighting):
        return None
    gamma, weight = (float(x) for x in efl_factors(np.float64(g), gamma_b, scale_factor,
                                                   focusing, weighting))
    return (
        f"EFL is acting almost as focal loss here: {when}, the {classes} classes' mean g is "
        f"{g:.3f} (>= {FOCAL_LIKE_G}), so their focusing factor is {gamma:.2f} instead of "
        f"focal loss's {gamma_b:g} and their weight {weight:.2f} instead of 1. g is a class's "
        "accumulated positive gradient over its negative gradient; it drops far below 1 only "
        "when each positive of a class is outweighed by many negatives for it: many anchors "
        "per image and a class present in few images (LVIS's rare classes: 1-10 of 100k "
        "images, over 100k anchors per image). With fewer anchors per image or classes that are "
        "not that rare, as here, there are too few negatives per rare positive and EFL and "
        "focal loss train almost alike. This is expected, not a bug (docs/reproducibility.md)."
    )
