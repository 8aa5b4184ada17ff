"""Setting up a run, in one direction: config -> :class:`RunPlan` -> Trainer.

:func:`plan_run` works out, once, everything a training run needs beyond the config: the
datasets prepared (generated, checked, their metadata filled in), the training loader with
the data stream it continues (on ``--resume``, the checkpoint's seed), and the schedule
(``train.max_iter``, or ``train.epochs`` resolved from that loader). The Trainer takes the
plan; nothing writes back into the config.

With ``train.seed`` >= 0, :func:`plan_run` seeds the process's generators (as Detectron2's
``default_setup`` does, seed + rank) before it draws anything: the data-stream seed and
the model's initial weights then follow from the config alone, however the Trainer is
built (``train_net.py``, or ``Trainer(cfg)`` in a notebook or a test after other work).
"""

import logging
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from detectron2.config import instantiate
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..data.lvis import prepare_datasets
from ..errors import ConfigError
from .resume import ResumePoint, find_resume_point

__all__ = ["RunPlan", "plan_run", "seed_run", "dataset_names", "prepare_run_datasets"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """What a training run needs that the config alone does not say.

    Attributes:
        train_loader: the training loader (``dataloader.train``), continuing the
            checkpoint's data stream when resuming.
        max_iter: iterations of the whole run.
        epoch_starts: with ``train.epochs``: the iteration at which each epoch starts,
            plus ``max_iter`` (epochs + 1 entries); None otherwise.
        resume: the checkpoint the run continues from (read once), or None.
    """

    train_loader: object
    max_iter: int
    epoch_starts: Optional[List[int]] = None
    resume: Optional[ResumePoint] = None


def dataset_names(node) -> List[str]:
    """The dataset names a ``dataloader.{train,test}`` node reads (``dataset.names``)."""
    names = node.dataset.names
    return [names] if isinstance(names, str) else list(names)


def prepare_run_datasets(cfg) -> None:
    """Generate, check and describe (metadata) every dataset the config reads."""
    prepare_datasets(dataset_names(cfg.dataloader.train) + dataset_names(cfg.dataloader.test))


def seed_run(train) -> None:
    """Seed python, numpy and torch (and ``PYTHONHASHSEED``) with ``train.seed`` + rank, as
    ``default_setup`` does; a negative or missing seed leaves the generators as they are."""
    seed = train.get("seed", -1)
    if seed is not None and seed >= 0:
        seed_all_rng(seed + comm.get_rank())


def plan_run(cfg, resume: bool = False) -> RunPlan:
    """Seed the generators (:func:`seed_run`), prepare the datasets, build the training
    loader and resolve the schedule.

    With ``resume`` and a ``last_checkpoint`` in ``train.output_dir``, that checkpoint is
    read (once: the plan hands it to ``Trainer.resume_or_load``), the loader continues its
    data stream, and ``train.epochs`` is resolved from that stream.
    """
    seed_run(cfg.train)  # before the loader draws its stream's seed and the model its weights
    prepare_run_datasets(cfg)
    loader = instantiate(cfg.dataloader.train)
    point = find_resume_point(cfg.train.output_dir) if resume else None
    if point is not None and point.loader_state is not None and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(point.loader_state)
    epoch_starts = epoch_schedule(cfg.train, loader)
    max_iter = epoch_starts[-1] if epoch_starts else cfg.train.max_iter
    return RunPlan(loader, int(max_iter), epoch_starts, point)


def epoch_schedule(train, loader) -> Optional[List[int]]:
    """With ``train.epochs``: the iteration at which each epoch of ``loader`` starts, plus
    the total (which replaces ``train.max_iter``), logged; None without ``train.epochs``.
    The loader must expose ``epoch_starts(num_epochs)`` (``efl.data.lvis.build_train_loader``'s
    does)."""
    epochs = train.get("epochs")
    if epochs is None:
        return None
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"train.epochs must be a positive integer; got {epochs!r}")
    if not hasattr(loader, "epoch_starts"):
        raise ConfigError(
            f"train.epochs={epochs} needs a training loader that knows its epochs; "
            f"dataloader.train builds a {type(loader).__name__}. Use "
            "efl.data.lvis.build_train_loader, or set train.epochs=None and train.max_iter."
        )
    starts = [int(s) for s in loader.epoch_starts(epochs)]
    lengths = np.diff(starts)
    logger.info(
        f"Schedule: train.epochs={epochs} epochs of "
        + (f"{lengths[0]}" if lengths.min() == lengths.max() else f"{lengths.min()}-{lengths.max()}")
        + f" iterations ({getattr(loader, 'describe_epoch', lambda: '')()}) -> train.max_iter="
        f"{starts[-1]}" + (f" (the config's {train.max_iter} is replaced)"
                           if train.get("max_iter") not in (None, starts[-1]) else "")
    )
    return starts
