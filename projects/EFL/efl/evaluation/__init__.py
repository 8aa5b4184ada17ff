"""LVIS evaluation: :func:`evaluate_lvis` (a vectorised implementation of lvis-api's
protocol, or lvis-api itself; APfixed), :class:`FastLVISEvaluator` (the configs'
evaluator), and Detectron2's ``LVISEvaluator`` made runnable with today's numpy."""

from .evaluator import FastLVISEvaluator
from .lvis_api import LVISEvaluator, lvis_numpy_aliases
from .lvis_eval import BOX_KEYS, FIXED_KEYS, evaluate_lvis, top_per_class

__all__ = ["BOX_KEYS", "FIXED_KEYS", "FastLVISEvaluator", "LVISEvaluator", "evaluate_lvis",
           "lvis_numpy_aliases", "top_per_class"]
