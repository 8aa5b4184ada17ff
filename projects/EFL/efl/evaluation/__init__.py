"""LVIS evaluation: Detectron2's ``LVISEvaluator`` made runnable with today's numpy."""

from .lvis_api import LVISEvaluator, lvis_numpy_aliases

__all__ = ["LVISEvaluator", "lvis_numpy_aliases"]
