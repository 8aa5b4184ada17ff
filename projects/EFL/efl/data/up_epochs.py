"""The EFL authors' repeat-factor sampler (United-Perception ``repeat_factor``,
up/data/samplers/sampler.py, with the YOLOX-IP recipe's ``t: 0.001, pn: 0.5, ri_mode: ceil,
static_size: false``) and what it does to the length of an epoch.

- Repeat factors: r_c = max(1, (t / f_c) ** 0.5), f_c the fraction of training images
  (those with annotations) that hold class c; an image is repeated ceil(max_c r_c) times,
  1 without annotations. Detectron2's ``repeat_factors_from_category_frequency`` computes
  the same r, rounded up here; ``efl.data.build_train_loader(repeat_rounding="ceil")``
  streams them (each pass a fresh permutation of the R = sum of the factors indices).
- Epoch length: their schedule counts epochs of ``len(batch_sampler)`` iterations, and
  their ``base`` batch sampler takes its length from the sampler's ``__len__``, which is
  the NOT repeated ceil(N / gpus): an epoch of the schedule (lr warm-up, cosine, the last
  15 epochs without mosaic, 300 epochs) is ceil(ceil(N / gpus) / images_per_gpu)
  iterations, while one pass over the repeated data takes ceil(ceil(R / gpus) /
  images_per_gpu). ``static_size`` is read only by their aspect-ratio batch sampler, so
  ``false`` changes nothing here.
"""

import math
from typing import Sequence

import torch
from detectron2.data.samplers import RepeatFactorTrainingSampler

__all__ = [
    "ceil_repeat_factors", "schedule_epoch_iterations", "repeated_pass_iterations", "no_aug_start",
]


def ceil_repeat_factors(dataset_dicts: Sequence[dict], repeat_thresh: float) -> torch.Tensor:
    """(N,) float32 integer-valued factors ceil(max(1, max_c sqrt(t / f_c))) per image."""
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
        list(dataset_dicts), repeat_thresh)
    return torch.ceil(factors - 1e-6)  # 1e-6: float32 noise on an exact integer


def schedule_epoch_iterations(num_images: int, images_per_gpu: int, num_gpus: int = 1) -> int:
    """Iterations of one epoch of their schedule: ceil(ceil(N / gpus) / images per gpu),
    N the training images (not repeated). LVIS v1 train (99388 annotated images), 16 GPUs
    x 8: 777."""
    return math.ceil(math.ceil(num_images / num_gpus) / images_per_gpu)


def repeated_pass_iterations(repeat_factors: Sequence[float], images_per_gpu: int,
                             num_gpus: int = 1) -> int:
    """Iterations their sampler takes to go once over the repeated indices."""
    total = int(round(float(sum(float(r) for r in repeat_factors))))
    return math.ceil(math.ceil(total / num_gpus) / images_per_gpu)


def no_aug_start(epoch_iterations: int, epochs: int = 300, no_aug_epochs: int = 15) -> int:
    """First iteration of their last ``no_aug_epochs`` (their yolox_noaug hook:
    cur_iter >= epoch_size x (max_epoch - no_aug_epoch))."""
    return epoch_iterations * (epochs - no_aug_epochs)


