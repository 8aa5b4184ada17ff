"""A training loader whose batch of iteration i is a pure function of (seed, i), so a run
resumed at iteration s sees exactly the batches an uninterrupted run sees from s on.

Detectron2's loader cannot do this: its ``TrainingSampler`` / ``RepeatFactorTrainingSampler``
restart their infinite index stream at the beginning, ``AspectRatioGroupedDataset`` holds
half-filled buckets, DataLoader workers shard the stream element by element, and the random
augmentations draw from per-worker generators seeded afresh at every start. Here:

- The stream is cut into epochs; epoch e is drawn from a generator keyed on (seed, e): the
  repeat-factor rounding (if any), the shuffle, and the global batches of
  ``total_batch_size`` images (of one aspect-ratio group each, ordered as Detectron2's
  bucketing would complete them). Each epoch drops its last < ``total_batch_size`` images
  (per group), a different random few every epoch. Finding iteration i means computing the
  lengths of the epochs before it: a few numpy passes over the dataset per epoch.
- Rank r of W takes images [r * B / W, (r + 1) * B / W) of each global batch.
- Image k of global batch i is mapped with python/numpy/torch generators seeded by
  (seed, i, k); the process's own generators are left as they were. So the data depends
  neither on the number of workers nor on the world size nor on restarts.
- A mapper with ``takes_iteration = True`` is called as ``mapper(record, iteration=i)``
  (e.g. augmentations switched off from an iteration on: efl.data.yolox_aug); one with
  ``bind_dataset`` receives the dataset dicts once (to draw other images: mosaic, mixup).
- DataLoader workers produce whole batches: worker w of n makes iterations s + w, s + w + n,
  ...; the DataLoader hands them out in iteration order.
"""

import itertools
import logging
import os
import signal
import threading
from typing import List

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from detectron2.data.common import DatasetFromList
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.utils import comm

from ..errors import ImageUnreadable, InputError
from ..rng import preserve_rng_state, seed_sample_rngs

__all__ = ["ResumableTrainLoader"]

logger = logging.getLogger(__name__)

_MAX_MAPPER_RETRIES = 10


class _LoaderError:
    """An error met in a DataLoader worker, carried to the main process as data (so its
    message arrives without the worker's stack trace)."""

    def __init__(self, message: str):
        self.message = message


def _ignore_stop_signals(worker_id: int) -> None:
    """In a DataLoader worker: ignore the signals a scheduler sends every process of a job
    (SLURM: SIGTERM; submitit's USR1/USR2); the training process decides (it checkpoints:
    efl.engine.preemption) and ends its workers itself. A worker that died first would
    make the training process fail at its next batch. SIGTERM from the training process
    (multiprocessing ending its workers) still ends the worker, as in PyTorch."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later too

    def wait_for_sigterm():
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)

    threading.Thread(target=wait_for_sigterm, name="sigterm", daemon=True).start()


def _identity(batch):
    return batch


class _IterationBatches(IterableDataset):
    """Yields the mapped batch of this rank for iterations start, start + 1, ... (or the
    share of them of this DataLoader worker)."""

    def __init__(self, dataset: List[dict], mapper, sampler, total_batch_size: int,
                 aspect_ratio_grouping: bool):
        self.sampler = sampler  # what to sample: dataset size or repeat factors, seed
        self.seed = int(sampler._seed)
        self.start_iter = 0
        if isinstance(sampler, RepeatFactorTrainingSampler):
            self._int_part = sampler._int_part.numpy().astype(np.int64)
            self._frac_part = sampler._frac_part.numpy().astype(np.float64)
        elif isinstance(sampler, TrainingSampler):
            self._int_part, self._frac_part = np.ones(sampler._size, dtype=np.int64), None
        else:
            raise TypeError(f"sampler must be a TrainingSampler or RepeatFactorTrainingSampler; "
                            f"got {type(sampler).__name__}")
        self._shuffle = bool(sampler._shuffle)
        self._dataset = DatasetFromList(dataset, copy=False)
        self._mapper = mapper
        if hasattr(mapper, "bind_dataset"):  # mappers that draw other images (mosaic, mixup)
            mapper.bind_dataset(self._dataset)
        self._with_iteration = bool(getattr(mapper, "takes_iteration", False))
        self._batch = int(total_batch_size)
        self._rank, self._world = comm.get_rank(), comm.get_world_size()
        self._groups = None
        if aspect_ratio_grouping:  # Detectron2's two buckets: w > h, and the rest
            self._groups = np.array([d["width"] > d["height"] for d in dataset], dtype=bool)
        self._epoch_lengths: List[int] = []  # batches per epoch, filled as needed
        self._cached = (None, None)  # (epoch, its batches)

    # ----- the global stream ----------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> np.ndarray:
        """(num_batches, total_batch_size) dataset indices of the batches of ``epoch``."""
        if self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.default_rng([self.seed % 2**64, epoch])
        reps = self._int_part
        if self._frac_part is not None:
            reps = reps + (rng.random(len(reps)) < self._frac_part)
        idx = np.repeat(np.arange(len(reps)), reps)
        if self._shuffle:
            idx = idx[rng.permutation(len(idx))]
        B = self._batch
        if self._groups is None:
            batches = idx[: len(idx) // B * B].reshape(-1, B)
        else:
            parts, ends = [], []
            for g in (True, False):
                pos = np.flatnonzero(self._groups[idx] == g)
                pos = pos[: len(pos) // B * B].reshape(-1, B)
                parts.append(idx[pos])
                ends.append(pos[:, -1])
            # a batch is complete when its last image arrives: Detectron2's bucket order
            order = np.argsort(np.concatenate(ends), kind="stable")
            batches = np.concatenate(parts)[order]
        self._cached = (epoch, batches)
        return batches

    def _locate(self, iteration: int):
        """(epoch, row) of global batch ``iteration``."""
        first = 0
        for epoch in itertools.count():
            if epoch == len(self._epoch_lengths):
                self._epoch_lengths.append(len(self._epoch_batches(epoch)))
            n = self._epoch_lengths[epoch]
            if iteration < first + n:
                return epoch, iteration - first
            first += n

    def epoch_starts(self, num_epochs: int) -> List[int]:
        """Iteration at which each of epochs 0..num_epochs starts (num_epochs + 1 entries)."""
        while len(self._epoch_lengths) < num_epochs:
            self._epoch_lengths.append(len(self._epoch_batches(len(self._epoch_lengths))))
        return [int(s) for s in np.cumsum([0] + self._epoch_lengths[:num_epochs])]

    def batch_indices(self, iteration: int) -> np.ndarray:
        """Dataset indices of the global batch of ``iteration`` (all ranks)."""
        epoch, row = self._locate(iteration)
        return self._epoch_batches(epoch)[row]

    def check_not_empty(self) -> None:
        if len(self._epoch_batches(0)) == 0:
            raise InputError(
                f"The training set gives no batch of total_batch_size={self._batch} images per "
                f"epoch ({len(self._dataset)} images"
                + (", split by aspect ratio w > h or not" if self._groups is not None else "")
                + "). Lower dataloader.train.total_batch_size or add images."
            )

    # ----- mapping ---------------------------------------------------------------------
    def _map(self, iteration: int, slot: int, index: int):
        for attempt in range(_MAX_MAPPER_RETRIES):
            record = self._dataset[index]
            seed_sample_rngs(self.seed, iteration, slot, attempt)
            try:
                out = (self._mapper(record, iteration=iteration) if self._with_iteration
                       else self._mapper(record))
            except (OSError, SizeMismatchError) as e:
                return _LoaderError(_unreadable_message(record, e))
            if out is not None:
                return out
            # Detectron2's convention: None skips the image; take another, deterministically.
            index = int(np.random.default_rng([self.seed % 2**64, iteration, slot, attempt])
                        .integers(len(self._dataset)))
        raise RuntimeError(f"the mapper skipped {_MAX_MAPPER_RETRIES} images in a row "
                           f"(iteration {iteration}, batch slot {slot})")

    def make_batch(self, iteration: int):
        """This rank's mapped batch of ``iteration`` (or a _LoaderError)."""
        per_rank = self._batch // self._world
        first = self._rank * per_rank
        indices = self.batch_indices(iteration)[first : first + per_rank]
        batch = []
        with preserve_rng_state():
            for slot, index in enumerate(indices, start=first):
                item = self._map(iteration, slot, int(index))
                if isinstance(item, _LoaderError):
                    return item
                batch.append(item)
        return batch

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for iteration in itertools.count(self.start_iter + worker, workers):
            yield self.make_batch(iteration)


def _unreadable_message(record: dict, error: Exception) -> str:
    name = record.get("file_name", "?")
    return (
        f"Cannot read training image {name} (image_id {record.get('image_id', '?')}): "
        f"{type(error).__name__}: {error}. The annotation file lists this image but the file "
        "is missing, truncated or not an image. Restore it (e.g. extract the image archive "
        "again) or remove the image and its annotations from the annotation file; then rerun "
        "(with --resume to continue from the last checkpoint)."
    )


class ResumableTrainLoader:
    """Iterable of per-rank training batches (lists of mapped dataset dicts), starting at
    iteration ``start_iter``. ``state_dict()`` holds the seed, so a resumed run continues
    the same stream even when the seed was drawn at random.

    Args:
        dataset: list of dataset dicts.
        mapper: Detectron2 mapper (dataset dict -> model input), e.g. ``DatasetMapper``.
        sampler: a Detectron2 ``TrainingSampler`` or ``RepeatFactorTrainingSampler``: what
            to sample (dataset size or repeat factors; shuffle; seed).
        total_batch_size: images per iteration over all ranks.
        num_workers: DataLoader worker processes (0: map in this process).
        aspect_ratio_grouping: batches of images with w > h, or of the others, only.
    """

    def __init__(self, dataset: List[dict], mapper, sampler, total_batch_size: int, *,
                 num_workers: int = 0, aspect_ratio_grouping: bool = True):
        world = comm.get_world_size()
        if total_batch_size <= 0 or total_batch_size % world:
            raise InputError(
                f"dataloader.train.total_batch_size={total_batch_size} must be a positive "
                f"multiple of the number of processes ({world})."
            )
        self.dataset = _IterationBatches(dataset, mapper, sampler, total_batch_size,
                                         aspect_ratio_grouping)
        self.dataset.check_not_empty()
        self.num_workers = num_workers
        self.start_iter = 0

    def __iter__(self):
        self.dataset.start_iter = self.start_iter
        with preserve_rng_state():  # DataLoader draws its worker seeds from torch's RNG
            batches = iter(DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                      collate_fn=_identity, worker_init_fn=_ignore_stop_signals))
        for batch in batches:
            if isinstance(batch, _LoaderError):
                raise ImageUnreadable(batch.message)
            yield batch

    def epoch_starts(self, num_epochs: int) -> List[int]:
        """Iteration at which each of epochs 0..num_epochs starts (num_epochs + 1 entries):
        an epoch is one pass over the (repeat-factor expanded) dataset in global batches."""
        return self.dataset.epoch_starts(num_epochs)

    def describe_epoch(self) -> str:
        """How an epoch is made, for the log."""
        d = self.dataset
        if d._frac_part is None:
            samples = "no repeat-factor sampling"
        elif not d._frac_part.any():
            samples = f"integer repeat factors -> {d._int_part.sum()} samples"
        else:
            samples = (f"repeat factors rounded stochastically -> "
                       f"~{(d._int_part + d._frac_part).sum():.0f} samples")
        return (f"{len(d._dataset)} images, {samples}, global batches of {d._batch}"
                + (", one aspect-ratio group per batch" if d._groups is not None else ""))

    def state_dict(self):
        return {"seed": self.dataset.seed}

    def load_state_dict(self, state_dict) -> None:
        seed = int(state_dict["seed"])
        if seed != self.dataset.seed:
            logger.info(f"Training data: continuing the stream of seed {seed} from the checkpoint")
        self.dataset.seed = seed
        self.dataset._epoch_lengths, self.dataset._cached = [], (None, None)
