"""Writing files so that a reader (or a rerun after a kill) sees the old file or the whole
new one, never a partial one. Below everything else in the package: it imports no
``efl`` module, so records, checkpoints, the trainer, exporters and tools can all use it."""

import json
import os
from typing import Callable

__all__ = ["TMP_MARK", "atomic_write", "write_json_atomic", "temporary_pid"]

TMP_MARK = ".tmp-"  # temporaries are ".<name>.tmp-<pid>" beside their file


def atomic_write(path: str, write: Callable) -> None:
    """Call ``write(f)`` on a temporary binary file next to ``path`` (fsync), then rename it
    to ``path``: readers see the old file or the complete new one, never a partial one."""
    folder, base = os.path.split(path)
    tmp = os.path.join(folder, f".{base}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable (power loss); not needed against kills
        fd = os.open(folder or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_json_atomic(path: str, obj, indent=2) -> None:
    """``obj`` as JSON (``indent``; numpy/torch scalars as floats) to ``path``, atomically."""
    text = json.dumps(obj, indent=indent, default=float)
    atomic_write(path, lambda f: f.write(text.encode()))


def temporary_pid(name: str):
    """The process id in the name of a temporary :func:`atomic_write` left (``.x.tmp-123``),
    or None if ``name`` is not one."""
    if not (name.startswith(".") and TMP_MARK in name):
        return None
    try:
        return int(name.rsplit(TMP_MARK, 1)[1])
    except ValueError:
        return None
