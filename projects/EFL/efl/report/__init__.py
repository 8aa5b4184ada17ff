"""Comparison reports (tables and plots) from training output folders: reading the runs
(:mod:`.runs`), the numbers and tables (:mod:`.tables`), the figures (:mod:`.plots`), and
the two-model :func:`build_report` (:mod:`.compare`) and the N-way
:func:`build_nway_report` (:mod:`.nway`) composing them."""

from ..records import BadRunFolder, MissingRunFile
from .compare import REPORT_FILES, build_report
from .nway import NWAY_FILES, build_nway_report, settings_of
from .runs import METRICS, Run, load_run, read_metrics
from .tables import format_table

__all__ = [
    "BadRunFolder",
    "MissingRunFile",
    "METRICS",
    "REPORT_FILES",
    "Run",
    "build_report",
    "NWAY_FILES",
    "build_nway_report",
    "settings_of",
    "format_table",
    "load_run",
    "read_metrics",
]
