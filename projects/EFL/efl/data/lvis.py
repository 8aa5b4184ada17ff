"""LVIS v1 and LVIS-format datasets: registration, checks with clear errors, the r/c/f
frequency groups, and the training loader with repeat-factor sampling.

Detectron2 registers ``lvis_v1_train`` / ``lvis_v1_val`` itself, under
``$DETECTRON2_DATASETS/lvis/lvis_v1_{train,val}.json`` with images under
``$DETECTRON2_DATASETS/coco/``; :func:`register_lvis_format` adds any other dataset in the
LVIS format (category ids 1..K, images named by ``coco_url``'s last two components).

Every load of one of these datasets (Detectron2's ``lvis_v1_{train,val}`` included: their
loaders are wrapped by :func:`prepare_datasets`) is checked once, after Detectron2's
``load_lvis_json``:

- file missing, not valid JSON, or not LVIS-shaped -> :class:`DatasetFormatError` naming
  the file and the first offending entry and field (the shape is diagnosed only when the
  load failed, so a good file is parsed once);
- an annotation whose category id is not among the categories -> error (the loader maps
  id -> id - 1 blindly: a wrong id silently trains another class or crashes later);
- a box that is not 4 finite numbers -> error; a box with width or height <= 0 is skipped
  and counted in the log (Detectron2's mapper would drop it anyway, and one bad box in a
  million should not stop a run); more than 10% of them -> error (the file is broken);
- image files missing -> error (one directory listing per image folder). Unreadable image
  files are reported by the training loader when it reads them.
The checks are numpy passes over arrays gathered in one loop over the annotations: about
a second for LVIS v1 train's 1.27M annotations.
"""

import json
import logging
import os
import time
from collections import defaultdict
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import load_lvis_json
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES as LVIS_V1_CATEGORIES
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.utils import comm

from ..errors import DatasetFormatError, InputError
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
_MAX_DEGENERATE_FRACTION = 0.1


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
            _diagnose(json_file)
            or f"{json_file}: Detectron2's LVIS loader failed ({type(e).__name__}: {e}); "
            "check that the file is an LVIS-format annotation file."
        ) from None
    num_classes = len(MetadataCatalog.get(name).get("thing_classes") or _read_categories(json_file))
    dicts = _check_annotations(name, json_file, dicts, num_classes)
    _check_images_exist(name, json_file, image_root, dicts)
    logger.info(
        f"Dataset '{name}': {len(dicts)} images and their annotations checked "
        f"({time.perf_counter() - start:.1f} s with loading)"
    )
    return dicts


# ----- checks -------------------------------------------------------------------------------
def _read_json(json_file: str):
    """The parsed file, or a DatasetFormatError saying why it is not valid JSON."""
    try:
        with open(json_file, "rb") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise DatasetFormatError(
            f"{json_file} is not a JSON text file ({e}). Point the dataset at the LVIS-format "
            "annotation file (e.g. lvis_v1_train.json, not the .zip or an image)."
        ) from None
    except json.JSONDecodeError as e:
        size = os.path.getsize(json_file)
        with open(json_file, "rb") as f:
            f.seek(max(0, size - 64))
            end = f.read().rstrip()[-1:]
        truncated = e.pos >= size - 2 or end not in (b"}", b"]")
        raise DatasetFormatError(
            f"{json_file} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} "
            f"(byte {e.pos} of {size})"
            + ("; the file ends early, so it looks truncated (an interrupted download or copy)"
               if truncated else "")
            + ". Download or extract it again (LVIS v1: https://www.lvisdataset.org/dataset), "
            "or regenerate it if it was generated."
        ) from None


def _diagnose(json_file: str) -> Optional[str]:
    """What makes ``json_file`` not an LVIS-format file, or None. Reads the file again:
    called only after a load failed."""
    data = _read_json(json_file)
    expected = "an object with the lists 'images', 'annotations' and 'categories'"
    if not isinstance(data, dict):
        return (f"{json_file} is valid JSON but not an LVIS/COCO annotation file: expected "
                f"{expected}, found a {type(data).__name__}.")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            found = "missing" if key not in data else f"a {type(data[key]).__name__}"
            return (f"{json_file} is valid JSON but not an LVIS/COCO annotation file: expected "
                    f"{expected}; '{key}' is {found} (top-level keys: {sorted(data)[:10]}).")
    fixes = {
        "coco_url": "Detectron2's LVIS loader finds each image at image_root + the last two "
        "parts of coco_url (<split folder>/<file name>); add coco_url, or register a COCO-style "
        "file (file_name only) with detectron2.data.datasets.register_coco_instances",
        "segmentation": "Detectron2's LVIS loader needs a polygon per annotation; for box-only "
        "data use the box as one polygon [x0, y0, x1, y0, x1, y1, x0, y1]",
    }
    required = {
        "images": ("id", "width", "height", "coco_url"),
        "categories": ("id", "name"),
        "annotations": ("id", "image_id", "category_id", "bbox", "segmentation"),
    }
    for key, fields in required.items():
        for i, entry in enumerate(data[key]):
            where = f"{json_file}: {key}[{i}]"
            if not isinstance(entry, dict):
                return f"{where} is a {type(entry).__name__}, not an object."
            where += f" (id {entry['id']})" if "id" in entry else ""
            for field in fields:
                if field not in entry:
                    fix = fixes.get(field, f"Every entry of '{key}' needs {', '.join(fields)}")
                    return f"{where} has no '{field}'. {fix}."
    image_ids = {img["id"] for img in data["images"]}
    seen = set()
    for i, ann in enumerate(data["annotations"]):
        where = f"{json_file}: annotations[{i}] (id {ann['id']})"
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            return f"{where} has bbox {bbox!r}; a box is [x, y, width, height], four numbers."
        segm = ann["segmentation"]
        if not (isinstance(segm, list) and segm
                and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segm)):
            return (f"{where} has segmentation {str(segm)[:80]}; expected a non-empty list of "
                    "polygons [x1, y1, x2, y2, x3, y3, ...] (at least 3 points). "
                    f"{fixes['segmentation']}.")
        if ann["image_id"] not in image_ids:
            return (f"{where} has image_id {ann['image_id']!r}, which is not the id of any "
                    "entry of 'images'.")
        if ann["id"] in seen:
            return f"{where}: annotation id {ann['id']!r} is used twice; annotation ids must be unique."
        seen.add(ann["id"])
    return None


def _check_annotations(name: str, json_file: str, dicts: List[dict], num_classes: int) -> List[dict]:
    """Category ids and boxes (see the module docstring); drops degenerate boxes."""
    counts = np.fromiter((len(r["annotations"]) for r in dicts), dtype=np.int64, count=len(dicts))
    n = int(counts.sum())
    ids, classes, boxes = [None] * n, np.empty(n, dtype=np.int64), [None] * n
    k = 0
    for r in dicts:
        for a in r["annotations"]:
            ids[k] = a.pop("id")  # loaded only for these messages
            classes[k] = a["category_id"]
            boxes[k] = a["bbox"]
            k += 1
    owner = np.repeat(np.arange(len(dicts)), counts)  # annotation -> its image record

    def example(j):
        return f"annotation id {ids[j]} (image id {dicts[owner[j]]['image_id']})"

    bad = np.flatnonzero((classes < 0) | (classes >= num_classes))
    if len(bad):
        j = bad[0]
        raise DatasetFormatError(
            f"{json_file}: {len(bad)} annotation(s) have a category_id that is not among the "
            f"{num_classes} categories (ids 1..{num_classes}), e.g. {example(j)} has category_id "
            f"{classes[j] + 1}. Fix those annotations or add their categories, then rerun."
        )
    try:
        xywh = np.array(boxes, dtype=np.float64).reshape(n, 4)
    except (ValueError, TypeError):
        message = _diagnose(json_file) or f"{json_file}: a bbox is not 4 numbers."
        raise DatasetFormatError(message) from None
    bad = np.flatnonzero(~np.isfinite(xywh).all(axis=1))
    if len(bad):
        j = bad[0]
        raise DatasetFormatError(
            f"{json_file}: {len(bad)} box(es) hold NaN or infinity, e.g. {example(j)} has bbox "
            f"{boxes[j]}. Fix or remove those annotations."
        )
    bad = np.flatnonzero((xywh[:, 2] <= 0) | (xywh[:, 3] <= 0))
    if len(bad) > _MAX_DEGENERATE_FRACTION * max(n, 1):
        j = bad[0]
        raise DatasetFormatError(
            f"{json_file}: {len(bad)} of {n} boxes have width or height <= 0 (more than "
            f"{_MAX_DEGENERATE_FRACTION:.0%}), e.g. {example(j)} has bbox {boxes[j]}. LVIS/COCO "
            "boxes are [x, y, width, height] with width, height > 0: check how the file's "
            "boxes were written."
        )
    if len(bad):
        drop = set(bad.tolist())
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for i in np.unique(owner[bad]):
            s = starts[i]
            dicts[i]["annotations"] = [
                a for t, a in enumerate(dicts[i]["annotations"]) if s + t not in drop
            ]
        logger.warning(
            f"Dataset '{name}': skipped {len(bad)} of {n} annotations whose box has width or "
            f"height <= 0 (e.g. {example(bad[0])}, bbox {boxes[bad[0]]})."
        )
    return dicts


def _check_images_exist(name: str, json_file: str, image_root: str, dicts: List[dict]) -> None:
    by_folder = defaultdict(list)
    for r in dicts:
        folder, file = os.path.split(r["file_name"])
        by_folder[folder].append(file)
    missing = []
    for folder, files in by_folder.items():
        try:
            present = set(os.listdir(folder))
        except FileNotFoundError:
            present = set()
        missing += [os.path.join(folder, f) for f in files if f not in present]
    if missing:
        raise DatasetFilesMissing(
            f"Dataset '{name}': {len(missing)} of the {len(dicts)} images listed in {json_file} "
            f"are missing, e.g. {', '.join(missing[:3])}. Images are read from image_root "
            f"({image_root}) + the last two parts of each image's coco_url (<split folder>/<file "
            "name>); LVIS v1 uses the COCO 2017 images in coco/train2017 and coco/val2017. Put "
            "the images there, or fix image_root / coco_url."
        )


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
            categories = _read_categories(json_file)
            meta.set(thing_classes=[c["name"] for c in categories])
            if all("frequency" in c for c in categories):
                meta.set(class_groups=[c["frequency"] for c in categories])


def _read_categories(json_file: str) -> List[dict]:
    data = _read_json(json_file)
    categories = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(categories, list) or not all(
        isinstance(c, dict) and "id" in c and "name" in c for c in categories
    ):
        raise DatasetFormatError(_diagnose(json_file) or f"{json_file}: no valid 'categories' list.")
    categories = sorted(categories, key=lambda c: c["id"])
    ids = [c["id"] for c in categories]
    if ids != list(range(1, len(ids) + 1)):
        raise DatasetFormatError(
            f"{json_file}: category ids must be 1..K without gaps (Detectron2's LVIS loader "
            f"maps id -> id - 1); got ids {ids[:5]}...{ids[-3:]}. Renumber the categories and "
            "the annotations' category_id."
        )
    return categories


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
        categories = _read_categories(json_file)
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

