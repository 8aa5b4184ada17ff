"""Resuming a run, in one place.

The checkpoint that ``OUTPUT_DIR/last_checkpoint`` names is read once
(:func:`find_resume_point`; the run plan reads it when it needs the checkpoint's data
stream before the trainer exists, :func:`efl.engine.plan_run`). :func:`resume_or_load`
then loads it into a trainer and decides, for every route (the LazyConfig ``Trainer``,
``YAMLTrainer``, a Detectron2 user's ``DefaultTrainer`` subclass):

- the start iteration (the checkpoint's iteration + 1);
- the training loader's position: the checkpoint's data stream (seed), restarted at the
  start iteration (loaders with ``start_iter``, e.g. ``efl.data.lvis.build_train_loader``'s);
- ``metrics.json``: the lines the interrupted run wrote after the checkpoint are cut;
- the plan check: with ``train.epochs``, the schedule must be the checkpoint stream's.

The RNG states and the loss normaliser come back with the trainer's state
(:class:`efl.engine.hooks.ResumeState`, a hook, restored just before the first step).
"""

import json
import logging
import os
from dataclasses import dataclass
from typing import List, Optional

from detectron2.utils import comm

from .. import compat
from ..checkpoint import read_last_checkpoint
from ..errors import ConfigError

__all__ = ["ResumePoint", "find_resume_point", "resume_or_load", "drop_metrics_after"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint to continue from: its ``path`` and its content, read once."""

    path: str
    checkpoint: dict

    @property
    def loader_state(self) -> Optional[dict]:
        """The training loader's ``state_dict`` (its stream's seed), or None."""
        trainer = self.checkpoint.get("trainer", {})
        state = trainer.get("hooks", {}).get("ResumeState", {}).get("data_loader")
        return state if state is not None else trainer.get("data_loader")  # older checkpoints


def find_resume_point(output_dir: str) -> Optional[ResumePoint]:
    """The checkpoint ``output_dir/last_checkpoint`` names, read; None without one."""
    found = read_last_checkpoint(output_dir)
    return ResumePoint(*found) if found is not None else None


def resume_or_load(trainer, init_checkpoint: str, resume: bool, point: Optional[ResumePoint] = None,
                   epoch_starts: Optional[List[int]] = None) -> int:
    """With ``resume`` and a checkpoint (``point``, default: :func:`find_resume_point` of
    ``trainer.checkpointer.save_dir``): continue from it exactly (module docstring).
    Otherwise load the model weights of ``init_checkpoint`` (if set) and start at 0.

    ``trainer``: has ``checkpointer`` (an ``EFLCheckpointer`` holding the trainer),
    ``data_loader``, ``iter``, ``start_iter``; ``epoch_starts``: the run's planned epoch
    starts (``train.epochs``), or None. Sets and returns ``trainer.start_iter``.
    """
    checkpointer = trainer.checkpointer
    if not resume:
        point = None
    elif point is None:
        point = find_resume_point(checkpointer.save_dir)
    if point is None:
        checkpointer.resume_or_load(init_checkpoint, resume=False)
        trainer.start_iter = 0
        return 0
    checkpointer.remove_stale_temporaries()
    checkpointer.resume_from(point.path, point.checkpoint)  # the trainer's state included
    done = trainer.iter
    trainer.start_iter = done + 1
    _position_loader(trainer, point, done + 1)
    if comm.is_main_process():
        drop_metrics_after(os.path.join(checkpointer.save_dir, "metrics.json"), done)
    if epoch_starts is not None and trainer.data_loader.epoch_starts(len(epoch_starts) - 1) != epoch_starts:
        raise ConfigError(
            "The checkpoint's data stream has other epoch lengths than this run's plan "
            "(made for a fresh run): with train.epochs the schedule follows the "
            "checkpoint's stream. Build the trainer with "
            "Trainer(cfg, plan_run(cfg, resume=True)), as train_net.py --resume does."
        )
    return trainer.start_iter


def _position_loader(trainer, point: ResumePoint, start: int) -> None:
    """The checkpoint's data stream, from iteration ``start``."""
    loader, state = trainer.data_loader, point.loader_state
    if state is not None and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(state)
    if "ranks" not in point.checkpoint.get("trainer", {}).get("hooks", {}).get("ResumeState", {}):
        logger.warning(
            "The checkpoint has no RNG / loss-normaliser state (it was written by an older "
            "version or without efl.engine.register_run_guarantees): the resumed run "
            "continues, but not exactly as an uninterrupted run would."
        )
    if not hasattr(loader, "start_iter"):
        logger.warning(
            f"The training loader ({type(loader).__name__}) cannot start at iteration {start}: "
            f"it restarts its stream, so the images of iterations 0-{start - 1} are seen again. "
            "Use efl.data.lvis.build_train_loader."
        )
        return
    if state is None:
        logger.warning("The checkpoint has no data-stream seed: the resumed run reads "
                       "another stream than the interrupted one.")
    loader.start_iter = start
    compat.restart_data_iterator(trainer._trainer)


def drop_metrics_after(path: str, iteration: int) -> None:
    """Before resuming after ``iteration``: cut ``metrics.json`` before its first line
    from a later iteration (or a line cut by the kill); the resumed run writes those again.
    Truncated in place: Detectron2's JSONWriter already holds the file open for appending."""
    if not os.path.isfile(path):
        return
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            try:
                if json.loads(line).get("iteration", -1) > iteration:
                    break
            except ValueError:
                break
            offset += len(line)
    size = os.path.getsize(path)
    if offset < size:
        os.truncate(path, offset)
        logger.info(f"metrics.json: dropped {size - offset} bytes written after iteration "
                    f"{iteration} by the interrupted run")
