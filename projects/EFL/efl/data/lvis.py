"""LVIS v1 and LVIS-format datasets: registration, file checks with clear errors, the
r/c/f frequency groups, and the training loader with repeat-factor sampling.

Detectron2 registers ``lvis_v1_train`` / ``lvis_v1_val`` itself, under
``$DETECTRON2_DATASETS/lvis/lvis_v1_{train,val}.json`` with images under
``$DETECTRON2_DATASETS/coco/``; :func:`register_lvis_format` adds any other dataset in the
LVIS format (category ids 1..K, images named by ``coco_url``'s last two components).
"""

import json
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence

import torch

from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_train_loader,
)
from detectron2.data.datasets.lvis import load_lvis_json
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES as LVIS_V1_CATEGORIES
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler

from detectron2.utils import comm

from ..errors import InputError

__all__ = [
    "DatasetFilesMissing",
    "register_lvis_format",
    "prepare_datasets",
    "frequency_groups",
    "build_train_loader",
    "datasets_root",
]

logger = logging.getLogger(__name__)

# name -> function that creates the dataset's files if they are not there (e.g. generation)
_PREPARE: Dict[str, Callable[[], None]] = {}


class DatasetFilesMissing(InputError, FileNotFoundError):
    """A dataset's annotation file or image folder is not where its registration says."""


def datasets_root() -> str:
    """Detectron2's dataset root: ``$DETECTRON2_DATASETS``, default ``./datasets``."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def register_lvis_format(
    name: str, json_file: str, image_root: str, prepare: Optional[Callable[[], None]] = None
) -> None:
    """Register an LVIS-format dataset (``evaluator_type="lvis"``).

    Args:
        json_file: LVIS-format annotations; categories may carry ``frequency`` (r/c/f).
        image_root: folder that holds the split folders named in ``coco_url``; with or
            without a trailing "/".
        prepare: optional function that creates the files (run by :func:`prepare_datasets`
            and before the first load).
    Registering the same name again with the same files is a no-op.
    """
    image_root = os.path.join(image_root, "")  # load_lvis_json concatenates root + folder
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if meta.get("json_file") == json_file and meta.get("image_root") == image_root:
            return
        raise ValueError(f"dataset '{name}' is already registered with other files")

    def load():
        _prepare(name)
        return load_lvis_json(json_file, image_root, dataset_name=None)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="lvis")
    if prepare is not None:
        _PREPARE[name] = prepare


def _prepare(name: str, all_processes: bool = False) -> None:
    """Run the dataset's prepare function. With ``all_processes`` (every process calls
    this together), the main process goes first, then one process per machine (in case
    the dataset folder is not shared), then the rest, which then find the files."""
    fn = _PREPARE.get(name)
    if fn is None:
        return
    if not all_processes or comm.get_world_size() == 1:
        return fn()
    if comm.is_main_process():
        fn()
    comm.synchronize()
    if comm.get_local_rank() == 0 and not comm.is_main_process():
        fn()
    comm.synchronize()
    fn()


def prepare_datasets(names: Sequence[str]) -> None:
    """Create generated datasets, then check every dataset's files and fill in metadata.
    Called by every process of a run together.

    Raises:
        DatasetFilesMissing: with the expected path and how to fix it.
    """
    for name in dict.fromkeys(names):
        if name not in DatasetCatalog.list():
            raise InputError(
                f"dataset '{name}' is not registered; registered LVIS-format datasets: "
                f"{sorted(n for n in DatasetCatalog.list() if 'lvis' in n or n in _PREPARE)}"
            )
        _prepare(name, all_processes=True)
        meta = MetadataCatalog.get(name)
        json_file, image_root = meta.get("json_file"), meta.get("image_root")
        for what, path in (("annotation file", json_file), ("image folder", image_root)):
            if path is not None and not os.path.exists(path):
                raise DatasetFilesMissing(
                    f"Dataset '{name}': the {what} {path} does not exist. Detectron2 looks "
                    f"for datasets under $DETECTRON2_DATASETS (now {datasets_root()!r}); for "
                    "LVIS v1 it expects lvis/lvis_v1_train.json, lvis/lvis_v1_val.json and "
                    "the COCO 2017 images under coco/train2017 and coco/val2017. Put the files "
                    "there or set DETECTRON2_DATASETS=/path/to/datasets."
                )
        if not name.startswith("lvis_v1") and json_file and "thing_classes" not in meta.as_dict():
            categories = _read_categories(json_file)
            meta.set(thing_classes=[c["name"] for c in categories])
            if all("frequency" in c for c in categories):
                meta.set(class_groups=[c["frequency"] for c in categories])


def _read_categories(json_file: str) -> List[dict]:
    with open(json_file) as f:
        categories = sorted(json.load(f)["categories"], key=lambda c: c["id"])
    ids = [c["id"] for c in categories]
    if ids != list(range(1, len(ids) + 1)):
        raise ValueError(
            f"{json_file}: category ids must be 1..K without gaps (Detectron2's LVIS loader "
            f"maps id -> id - 1); got ids {ids[:5]}...{ids[-3:]}"
        )
    return categories


def frequency_groups(dataset_name: str, required: bool = True) -> Optional[List[str]]:
    """The LVIS frequency group ('r'/'c'/'f') of every class of a dataset, in class order.

    Taken from the metadata ``class_groups`` (set by :func:`prepare_datasets` from the
    categories' ``frequency``), or from Detectron2's LVIS v1 categories for ``lvis_v1_*``.
    Returns None (or raises, if ``required``) when the dataset has no frequencies.
    """
    if dataset_name.startswith("lvis_v1"):
        return [c["frequency"] for c in sorted(LVIS_V1_CATEGORIES, key=lambda c: c["id"])]
    meta = MetadataCatalog.get(dataset_name)
    if "class_groups" not in meta.as_dict() and dataset_name in DatasetCatalog.list():
        prepare_datasets([dataset_name])
    groups = meta.get("class_groups")
    if groups is None and required:
        raise ValueError(
            f"dataset '{dataset_name}' has no per-class frequency (LVIS categories' "
            "'frequency' field r/c/f)"
        )
    return groups


def build_train_loader(
    *,
    dataset,
    mapper,
    total_batch_size: int,
    num_workers: int = 0,
    repeat_thresh: Optional[float] = None,
    repeat_rounding: str = "stochastic",
    aspect_ratio_grouping: bool = True,
    seed: Optional[int] = None,
):
    """Detectron2's ``build_detection_train_loader`` with optional repeat-factor sampling.

    Args:
        dataset: list of dataset dicts.
        repeat_thresh: LVIS repeat-factor threshold t (e.g. 0.001); None samples uniformly.
            An image is repeated r = max(1, max over its classes of sqrt(t / f_c)) times
            per epoch, f_c being the fraction of training images that contain class c.
        repeat_rounding: "stochastic" (Detectron2: floor(r) plus one more with probability
            frac(r), redrawn every epoch) or "ceil" (the EFL authors: ceil(r) every epoch).
    """
    if repeat_rounding not in ("stochastic", "ceil"):
        raise ValueError(f"repeat_rounding must be 'stochastic' or 'ceil'; got {repeat_rounding!r}")
    if repeat_thresh:
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dataset, repeat_thresh
        )
        if repeat_rounding == "ceil":
            # Integer factors: the sampler's stochastic rounding then repeats exactly.
            factors = torch.ceil(factors - 1e-6)
        logger.info(
            f"Repeat-factor sampling (t={repeat_thresh}, {repeat_rounding} rounding): "
            f"{len(dataset)} images -> {factors.sum().item():.0f} samples per epoch"
        )
        sampler = RepeatFactorTrainingSampler(factors, seed=seed)
    else:
        sampler = TrainingSampler(len(dataset), seed=seed)
    return build_detection_train_loader(
        dataset=dataset,
        mapper=mapper,
        sampler=sampler,
        total_batch_size=total_batch_size,
        num_workers=num_workers,
        aspect_ratio_grouping=aspect_ratio_grouping,
    )
