"""Comparison reports (tables and plots) from training output folders."""

from .compare import (
    BadRunFolder,
    MissingRunFile,
    Run,
    build_report,
    format_table,
    load_run,
    read_metrics,
)

__all__ = [
    "BadRunFolder",
    "MissingRunFile",
    "Run",
    "build_report",
    "format_table",
    "load_run",
    "read_metrics",
]
