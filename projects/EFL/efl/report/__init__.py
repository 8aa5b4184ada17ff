"""Comparison reports (tables and plots) from training output folders: reading the runs
(:mod:`.runs`), the numbers and tables (:mod:`.tables`), the figures (:mod:`.plots`), and
:func:`build_report` composing them (:mod:`.compare`)."""

from ..records import BadRunFolder, MissingRunFile
from .compare import REPORT_FILES, build_report
from .runs import METRICS, Run, load_run, read_metrics
from .tables import format_table

__all__ = [
    "BadRunFolder",
    "MissingRunFile",
    "METRICS",
    "REPORT_FILES",
    "Run",
    "build_report",
    "format_table",
    "load_run",
    "read_metrics",
]
