"""Stopping on a scheduler's signal without losing iterations (docs/preemption.md).

SIGTERM (SLURM preemption, ``scancel``, ``scontrol requeue``, the time limit) and
submitit's early warning (``SUBMITIT_PREEMPT_SIGNAL``, default USR2, sent
``slurm_signal_delay_s`` before the time limit) make the training finish the iteration in
progress, write a checkpoint and exit with status 128 + signal number; ``--resume``
continues from that checkpoint exactly. With several processes all ranks agree on the
iteration to stop after (a signal may reach only some of them) and one checkpoint is
written.
"""

import logging
import multiprocessing
import os
import signal
import threading
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from detectron2.engine import HookBase
from detectron2.utils import comm

from .hooks import _is_checkpoint_iteration

__all__ = ["Preempted", "PreemptionCheckpointer", "SignalFlag", "exit_status",
           "forward_to_workers", "preemption_signals"]

logger = logging.getLogger(__name__)


def preemption_signals() -> Tuple[signal.Signals, ...]:
    """SIGTERM and submitit's early-warning signal (``$SUBMITIT_PREEMPT_SIGNAL``, as
    submitit reads it; default USR2)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    warning = getattr(signal, "SIG" + name, signal.SIGUSR2)
    return tuple(dict.fromkeys((signal.SIGTERM, warning)))


def exit_status(signum: int) -> int:
    """128 + signal number: what a shell reports for a process ended by that signal, so a
    preempted run is never taken for a finished (0) or failed (1, 2) one."""
    return 128 + int(signum)


class Preempted(SystemExit):
    """Raised out of ``Trainer.train`` after the checkpoint of ``iteration`` (0-based) was
    written; ends the process with :func:`exit_status` unless caught."""

    def __init__(self, signum: int, iteration: int):
        super().__init__(exit_status(signum))
        self.signum, self.iteration = int(signum), iteration


class SignalFlag:
    """Records the first of ``signals`` received (and how many came). The handler only
    records: it never raises, so a second signal during a save cannot interrupt it."""

    def __init__(self, signals: Sequence[int]):
        self.signals = tuple(signals)
        self.received: Optional[int] = None
        self.count = 0
        self._previous = {}

    def install(self) -> bool:
        """Handle ``signals`` until :meth:`restore` (main thread only; else False)."""
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Not in the main thread: preemption signals are not handled")
            return False
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return True

    def restore(self) -> None:
        """The handlers from before :meth:`install`."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        self.count += 1
        if self.received is None:
            self.received = signum


def _any_rank(signum: int) -> int:
    """The largest ``signum`` over all ranks (0: none received anywhere)."""
    if comm.get_world_size() == 1:
        return signum
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([signum], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


class PreemptionCheckpointer(HookBase):
    """After every iteration: if a preemption signal reached any rank, write the
    checkpoint of this iteration (``model_<iter>.pth``, through ``checkpointer``, unless
    the ``PeriodicCheckpointer(period)`` just wrote it) and raise :class:`Preempted`.

    Register it last, on every rank (one 8-byte all-reduce per iteration with several
    processes). ``before_save`` runs on every rank first (e.g. ``ResumeState.capture``).
    Handlers are installed in ``before_train`` and the previous ones restored in
    ``after_train``, so a signal during the final evaluation is not handled.
    """

    def __init__(self, checkpointer, period: int, before_save: Optional[Callable] = None,
                 signals: Optional[Sequence[int]] = None):
        self.checkpointer = checkpointer
        self._period = period
        self._before_save = before_save
        self.flag = SignalFlag(signals or preemption_signals())
        self._signal_iter = None  # iteration in progress when this rank heard it

    def before_train(self):
        self.flag.install()

    def after_train(self):
        self.flag.restore()

    def after_step(self):
        local = self.flag.received or 0
        if local and self._signal_iter is None:
            self._signal_iter = self.trainer.iter
        signum = _any_rank(local)
        if not signum:
            return
        it = self.trainer.iter
        saved = "model_final" if it + 1 >= self.trainer.max_iter else f"model_{it:07d}"
        periodic = _is_checkpoint_iteration(self.trainer, self._period)
        if not periodic:
            if self._before_save is not None:
                self._before_save()
            self.checkpointer.save(saved, iteration=it)
        comm.synchronize()  # every rank exits after the checkpoint is complete
        heard = (f"received during iteration {self._signal_iter}" if local
                 else "received by another rank")
        logger.warning(
            f"{signal.Signals(signum).name} {heard}: stopped after iteration {it} with its "
            f"checkpoint ({saved}.pth{', periodic' if periodic else ''}; "
            f"{self.flag.count} signal(s) here); exit status {exit_status(signum)}. "
            "Rerun with --resume to continue."
        )
        raise Preempted(signum, it)


class forward_to_workers:
    """``with forward_to_workers():`` in a launcher process that waits for its worker
    processes: a preemption signal sent to it is passed on to them (each worker handles it
    with :class:`PreemptionCheckpointer`) instead of ending it before them."""

    def __init__(self, signals: Optional[Sequence[int]] = None):
        self.signals = tuple(signals or preemption_signals())
        self._previous = {}

    def __enter__(self):
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._forward)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    @staticmethod
    def _forward(signum, frame):
        for child in multiprocessing.active_children():
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:
                pass
