"""Training: the LazyConfig ``Trainer`` and EFL hooks."""

from .hooks import EFLSummaryLogger
from .trainer import Trainer

__all__ = ["Trainer", "EFLSummaryLogger"]
