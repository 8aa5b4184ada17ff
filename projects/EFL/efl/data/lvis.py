"""LVIS v1 and LVIS-format datasets: registration, checks with clear errors, the r/c/f
frequency groups, and the training loader with repeat-factor sampling.

Detectron2 registers ``lvis_v1_train`` / ``lvis_v1_val`` itself, under
``$DETECTRON2_DATASETS/lvis/lvis_v1_{train,val}.json`` with images under
``$DETECTRON2_DATASETS/coco/``; :func:`register_lvis_format` adds any other dataset in the
LVIS format (category ids 1..K, images named by ``coco_url``'s last two components).

Every load of one of these datasets (Detectron2's ``lvis_v1_{train,val}`` included: their
loaders are wrapped by :func:`prepare_datasets`) is checked once, after Detectron2's
``load_lvis_json``, by :mod:`efl.data.lvis_checks`.
"""

import logging
import os
import time
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import load_lvis_json
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES as LVIS_V1_CATEGORIES
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.utils import comm

from ..errors import DatasetFormatError, InputError
from .lvis_checks import (
    DatasetFilesMissing,
    check_annotations,
    check_images_exist,
    diagnose,
    read_categories,
)
from .resumable import ResumableTrainLoader
from .up_epochs import ceil_repeat_factors

__all__ = [
    "DatasetFilesMissing",
    "DatasetFormatError",
    "register_lvis_format",
    "load_lvis_format",
    "prepare_datasets",
    "frequency_groups",
    "build_train_loader",
    "datasets_root",
]

logger = logging.getLogger(__name__)

# name -> function that creates the dataset's files if they are not there (e.g. generation)
_PREPARE: Dict[str, Callable[[], None]] = {}
_BUILTIN_LVIS = ("lvis_v1_train", "lvis_v1_val")


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

    DatasetCatalog.register(name, partial(load_lvis_format, name, json_file, image_root))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="lvis")
    if prepare is not None:
        _PREPARE[name] = prepare


def _check_builtin_lvis_loads() -> None:
    """Route Detectron2's own ``lvis_v1_{train,val}`` through :func:`load_lvis_format`
    (once; the only change this project makes to Detectron2's catalog)."""
    for name in _BUILTIN_LVIS:
        meta = MetadataCatalog.get(name)
        if name in DatasetCatalog.list() and meta.get("json_file") and not meta.get("efl_checked"):
            meta.set(efl_checked=True)
            DatasetCatalog.remove(name)
            image_root = os.path.join(meta.image_root, "")
            DatasetCatalog.register(name, partial(load_lvis_format, name, meta.json_file, image_root))


def load_lvis_format(name: str, json_file: str, image_root: str) -> List[dict]:
    """Detectron2's ``load_lvis_json`` with the checks above (raising InputErrors)."""
    _prepare(name)
    _check_files_exist(name)
    start = time.perf_counter()
    builtin = name in _BUILTIN_LVIS
    try:
        dicts = load_lvis_json(json_file, image_root, dataset_name=name if builtin else None,
                               extra_annotation_keys=["id"])
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, AssertionError) as e:
        # JSONDecodeError is a ValueError; the rest are shapes load_lvis_json did not expect
        raise DatasetFormatError(
            diagnose(json_file)
            or f"{json_file}: Detectron2's LVIS loader failed ({type(e).__name__}: {e}); "
            "check that the file is an LVIS-format annotation file."
        ) from None
    num_classes = len(MetadataCatalog.get(name).get("thing_classes") or read_categories(json_file))
    dicts = check_annotations(name, json_file, dicts, num_classes)
    check_images_exist(name, json_file, image_root, dicts)
    logger.info(
        f"Dataset '{name}': {len(dicts)} images and their annotations checked "
        f"({time.perf_counter() - start:.1f} s with loading)"
    )
    return dicts


def _check_files_exist(name: str) -> None:
    meta = MetadataCatalog.get(name)
    json_file, image_root = meta.get("json_file"), meta.get("image_root")
    for what, path in (("annotation file", json_file), ("image folder", image_root)):
        if path is not None and not os.path.exists(path):
            if name.startswith("lvis_v1"):
                hint = (
                    f"Detectron2 looks for datasets under $DETECTRON2_DATASETS (now "
                    f"{datasets_root()!r}); for LVIS v1 it expects lvis/lvis_v1_train.json, "
                    "lvis/lvis_v1_val.json and the COCO 2017 images under coco/train2017 and "
                    "coco/val2017. Put the files there or set DETECTRON2_DATASETS=/path/to/datasets."
                )
            else:
                hint = ("Create the file, or register the dataset with the right path "
                        "(efl.data.register_lvis_format).")
            raise DatasetFilesMissing(f"Dataset '{name}': the {what} {path} does not exist. {hint}")


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
        DatasetFormatError: the annotation file is not valid JSON / not LVIS-shaped.
    """
    if any(name in _BUILTIN_LVIS for name in names):
        _check_builtin_lvis_loads()
    for name in dict.fromkeys(names):
        if name not in DatasetCatalog.list():
            raise InputError(
                f"dataset '{name}' is not registered; registered LVIS-format datasets: "
                f"{sorted(n for n in DatasetCatalog.list() if 'lvis' in n or n in _PREPARE)}"
            )
        _prepare(name, all_processes=True)
        _check_files_exist(name)
        meta = MetadataCatalog.get(name)
        json_file = meta.get("json_file")
        if not name.startswith("lvis_v1") and json_file and "thing_classes" not in meta.as_dict():
            categories = read_categories(json_file)
            meta.set(thing_classes=[c["name"] for c in categories])
            if all("frequency" in c for c in categories):
                meta.set(class_groups=[c["frequency"] for c in categories])


def frequency_groups(dataset_name: str, required: bool = True) -> Optional[List[str]]:
    """The LVIS frequency group ('r'/'c'/'f') of every class of a dataset, in class order.

    Taken from Detectron2's LVIS v1 categories for ``lvis_v1_*``; otherwise from the
    metadata ``class_groups`` (set by :func:`prepare_datasets` from the categories'
    ``frequency``), or, before that, read from the annotation file's categories. Creates
    nothing: a dataset whose files do not exist yet (e.g. not generated) is an error.
    Returns None (or raises, if ``required``) when the dataset has no frequencies.
    """
    if dataset_name.startswith("lvis_v1"):
        return [c["frequency"] for c in sorted(LVIS_V1_CATEGORIES, key=lambda c: c["id"])]
    meta = MetadataCatalog.get(dataset_name)
    groups = meta.get("class_groups")
    json_file = meta.get("json_file")
    if groups is None and "thing_classes" not in meta.as_dict() and json_file:
        if not os.path.isfile(json_file):
            raise DatasetFilesMissing(
                f"Dataset '{dataset_name}': {json_file} does not exist (yet). A run creates "
                "generated datasets before it builds the model (efl.engine.plan_run); outside "
                f"a run, call efl.data.prepare_datasets(['{dataset_name}']) first."
            )
        categories = read_categories(json_file)
        if all("frequency" in c for c in categories):
            groups = [c["frequency"] for c in categories]
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
) -> ResumableTrainLoader:
    """The training loader: Detectron2's sampling (optionally repeat-factor sampling), made
    resumable by iteration (:class:`efl.data.resumable.ResumableTrainLoader`).

    Args:
        dataset: list of dataset dicts.
        repeat_thresh: LVIS repeat-factor threshold t (e.g. 0.001); None samples uniformly.
            An image is repeated r = max(1, max over its classes of sqrt(t / f_c)) times
            per epoch, f_c being the fraction of training images that contain class c.
        repeat_rounding: "stochastic" (Detectron2: floor(r) plus one more with probability
            frac(r), redrawn every epoch) or "ceil" (the EFL authors: ceil(r) every epoch;
            their schedule's epoch length: :mod:`efl.data.up_epochs`).
        seed: of the data order and augmentations; None draws one shared by all processes
            (saved in the checkpoints, so a resumed run continues the same stream).
    """
    if repeat_rounding not in ("stochastic", "ceil"):
        raise ValueError(f"repeat_rounding must be 'stochastic' or 'ceil'; got {repeat_rounding!r}")
    if repeat_thresh:
        if repeat_rounding == "ceil":
            # Integer factors: the sampler's stochastic rounding then repeats exactly.
            factors = ceil_repeat_factors(dataset, repeat_thresh)
        else:
            factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                dataset, repeat_thresh
            )
        logger.info(
            f"Repeat-factor sampling (t={repeat_thresh}, {repeat_rounding} rounding): "
            f"{len(dataset)} images -> {factors.sum().item():.0f} samples per epoch"
        )
        sampler = RepeatFactorTrainingSampler(factors, seed=seed)
    else:
        sampler = TrainingSampler(len(dataset), seed=seed)
    return ResumableTrainLoader(
        dataset, mapper, sampler, total_batch_size,
        num_workers=num_workers, aspect_ratio_grouping=aspect_ratio_grouping,
    )

