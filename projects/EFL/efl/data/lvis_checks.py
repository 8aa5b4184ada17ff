"""The checks of an LVIS-format annotation file behind efl.data.lvis's loads, with errors
that name the file, the entry and the field:

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
from collections import defaultdict
from typing import List, Optional

import numpy as np

from ..errors import DatasetFormatError, InputError

__all__ = ["DatasetFilesMissing", "check_annotations", "check_images_exist", "diagnose",
           "read_categories", "read_json"]

logger = logging.getLogger(__name__)
_MAX_DEGENERATE_FRACTION = 0.1


class DatasetFilesMissing(InputError, FileNotFoundError):
    """A dataset's annotation file or image folder is not where its registration says."""


def read_json(json_file: str):
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


def diagnose(json_file: str) -> Optional[str]:
    """What makes ``json_file`` not an LVIS-format file, or None. Reads the file again:
    called only after a load failed."""
    data = read_json(json_file)
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


def check_annotations(name: str, json_file: str, dicts: List[dict], num_classes: int) -> List[dict]:
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
        message = diagnose(json_file) or f"{json_file}: a bbox is not 4 numbers."
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


def check_images_exist(name: str, json_file: str, image_root: str, dicts: List[dict]) -> None:
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


def read_categories(json_file: str) -> List[dict]:
    data = read_json(json_file)
    categories = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(categories, list) or not all(
        isinstance(c, dict) and "id" in c and "name" in c for c in categories
    ):
        raise DatasetFormatError(diagnose(json_file) or f"{json_file}: no valid 'categories' list.")
    categories = sorted(categories, key=lambda c: c["id"])
    ids = [c["id"] for c in categories]
    if ids != list(range(1, len(ids) + 1)):
        raise DatasetFormatError(
            f"{json_file}: category ids must be 1..K without gaps (Detectron2's LVIS loader "
            f"maps id -> id - 1); got ids {ids[:5]}...{ids[-3:]}. Renumber the categories and "
            "the annotations' category_id."
        )
    return categories
