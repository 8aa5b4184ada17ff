"""Writing files and folders so that a reader (or a rerun after a kill) sees the old one or
the whole new one, never a partial one, and removing what a killed writer left (its pid
is in the temporary's name). Below everything else in the package: it imports no
``efl`` module, so records, checkpoints, the trainer, exporters and tools can all use it."""

import json
import os
import shutil
import tempfile
import uuid
from typing import Callable

__all__ = ["TMP_MARK", "atomic_write", "write_json_atomic", "temporary_pid", "pid_alive",
           "temporary_dir", "replace_dir", "remove_stale_dirs"]

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
    """``obj`` as JSON (``indent``; numpy/torch scalars as floats) to ``path``, atomically;
    the folder is created if needed."""
    text = json.dumps(obj, indent=indent, default=float)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
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


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists on this machine (also one of another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def temporary_dir(dst: str) -> str:
    """A new empty folder ``.<name>.tmp-<pid>-<random>`` beside ``dst`` (whose parent is
    created if needed): build ``dst`` in it, then put it in place with :func:`replace_dir`."""
    parent, name = os.path.split(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{name}{TMP_MARK}{os.getpid()}-", dir=parent)


def replace_dir(src: str, dst: str) -> None:
    """Put the complete folder ``src`` in the place of ``dst`` (absent, or a folder that is
    then deleted) by renames on one file system: a reader sees the old folder, the new one
    or (between two renames) none, never a partial one. The old one is first renamed to
    ``.<name>.old-<pid>-<random>`` beside it (see :func:`remove_stale_dirs`), then
    deleted. Raises OSError when a rename fails (e.g. another process put a folder at
    ``dst`` meanwhile); the old folder is then put back if ``dst`` is still free."""
    dst = os.fspath(dst)
    if not os.path.lexists(dst):
        os.rename(src, dst)
        return
    parent, name = os.path.split(os.path.abspath(dst))
    old = os.path.join(parent, f".{name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.rename(dst, old)
    try:
        os.rename(src, dst)
    except OSError:
        if not os.path.lexists(dst):
            os.rename(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_dirs(dst: str) -> None:
    """Delete the folders that :func:`temporary_dir` and :func:`replace_dir` left beside
    ``dst`` in processes that were killed (their pid no longer runs)."""
    parent, name = os.path.split(os.path.abspath(dst))
    prefixes = (f".{name}{TMP_MARK}", f".{name}.old-")
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for e in entries:
        prefix = next((x for x in prefixes if e.name.startswith(x)), None)
        if prefix is None or not e.is_dir(follow_symlinks=False):
            continue
        try:
            pid = int(e.name[len(prefix):].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(e.path, ignore_errors=True)
