"""Measurement tools behind ``tools/benchmark_*.py``, ``tools/gpu_check.py`` and
``tools/scale_probe.py``: timing and memory helpers, the GPU check, the long-tail probe."""
