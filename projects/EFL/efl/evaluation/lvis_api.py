"""lvis-api (``lvis==0.5.3``, the reference LVIS evaluator) on numpy >= 1.24.

lvis 0.5.3's ``LVISEval`` uses ``np.float``, which numpy 1.24 removed; lvis-api has had no
release since 2020. The aliases are restored only while lvis-api runs.
"""

import contextlib

import numpy as np

from detectron2.evaluation import LVISEvaluator as _D2LVISEvaluator

__all__ = ["LVISEvaluator", "lvis_numpy_aliases"]


@contextlib.contextmanager
def lvis_numpy_aliases():
    """``np.float`` / ``np.int`` as the builtins for the duration, then as before."""
    added = [name for name in ("float", "int") if name not in np.__dict__]
    for name in added:
        setattr(np, name, {"float": float, "int": int}[name])
    try:
        yield
    finally:
        for name in added:
            delattr(np, name)


class LVISEvaluator(_D2LVISEvaluator):
    """Detectron2's ``LVISEvaluator`` (same arguments and results), with lvis-api running
    inside :func:`lvis_numpy_aliases`."""

    def evaluate(self, *args, **kwargs):
        with lvis_numpy_aliases():
            return super().evaluate(*args, **kwargs)
