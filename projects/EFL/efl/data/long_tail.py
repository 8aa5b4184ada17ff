"""Own long-tailed data -> LVIS format with r/c/f groups (``tools/prepare_long_tail.py``).

Reads a training and a validation annotation file, COCO- or LVIS-format, and writes
LVIS-format ``train.json`` / ``val.json`` that :func:`efl.data.register_lvis_format`, the
EFL group statistics and LVIS evaluation (APr/APc/APf) accept:

- categories: the training file's, sorted by id and renumbered 1..K when the ids are not
  already 1..K (``original_id`` keeps the input id); ``image_count``, ``instance_count``
  and ``frequency`` (r: <= ``rare_max`` training images, c: <= ``common_max``, f: more;
  LVIS's 10 / 100) from the training split, on both files;
- images: ``coco_url`` whose last two parts are ``<folder>/<file>`` under the image root
  (Detectron2's LVIS loader reads image_root + those two parts); ``neg_category_ids``: the
  input's if it has them, else every class absent from the image (exhaustive annotation,
  the default) or none (``exhaustive=False``); ``not_exhaustive_category_ids``: the input's
  or none;
- annotations: box polygon as ``segmentation`` when there is no polygon, ``area`` = the
  box's when missing; COCO crowd regions (``iscrowd``) are dropped from training and kept
  as ``"ignore": 1`` for evaluation.
Inconsistent input raises :class:`efl.errors.DatasetFormatError` naming file, entry, field.
"""

import json
import math
import os
from collections import Counter
from typing import Dict, List, Optional

from ..errors import DatasetFormatError
from ..io import write_json_atomic
from .synthetic import frequency_group

__all__ = ["convert_long_tail", "format_summary", "read_annotation_file"]

_FIELDS = {
    "images": ("id", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def read_annotation_file(path: str) -> dict:
    """The parsed COCO/LVIS annotation file, its shape checked (DatasetFormatError)."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path} does not exist; pass the path of a COCO- or "
                                 "LVIS-format annotation file.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetFormatError(f"{path} is not valid JSON ({e}); pass a COCO- or LVIS-format "
                                 "annotation file (not an archive or an image).") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in _FIELDS):
        found = sorted(data)[:10] if isinstance(data, dict) else type(data).__name__
        raise DatasetFormatError(
            f"{path} is not a COCO/LVIS annotation file: expected an object with the lists "
            f"'images', 'annotations' and 'categories' (found {found}).")
    for key, fields in _FIELDS.items():
        seen = set()
        for i, entry in enumerate(data[key]):
            where = f"{path}: {key}[{i}]"
            if not isinstance(entry, dict):
                raise DatasetFormatError(f"{where} is a {type(entry).__name__}, not an object.")
            for field in fields:
                if field not in entry:
                    raise DatasetFormatError(f"{where} has no '{field}'; every entry of '{key}' "
                                             f"needs {', '.join(fields)}.")
            if entry["id"] in seen:
                raise DatasetFormatError(f"{where} has id {entry['id']!r}, which an earlier "
                                         f"entry of '{key}' already uses; ids must be unique.")
            seen.add(entry["id"])
    images = {im["id"] for im in data["images"]}
    categories = {c["id"] for c in data["categories"]}
    for i, a in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}] (id {a['id']})"
        if a["image_id"] not in images:
            raise DatasetFormatError(f"{where} has image_id {a['image_id']!r}, which is not the "
                                     "id of any entry of 'images'. Fix the annotation or add the image.")
        if a["category_id"] not in categories:
            raise DatasetFormatError(
                f"{where} has category_id {a['category_id']!r}, which is not the id of any entry "
                "of 'categories'. Fix the annotation or add the category.")
        b = a["bbox"]
        if not (isinstance(b, list) and len(b) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)):
            raise DatasetFormatError(f"{where} has bbox {b!r}; a box is [x, y, width, height], "
                                     "four finite numbers.")
    return data


def _image_path(path: str, i: int, image: dict) -> List[str]:
    """(folder, file) relative to the image root, for ``coco_url``."""
    if "coco_url" in image:
        return image["coco_url"].split("/")[-2:]
    if "file_name" not in image:
        raise DatasetFormatError(f"{path}: images[{i}] (id {image['id']}) has neither "
                                 "'file_name' (COCO) nor 'coco_url' (LVIS); add the image's path "
                                 "relative to --image-root as file_name.")
    parts = [p for p in image["file_name"].replace(os.sep, "/").split("/") if p not in ("", ".")]
    if len(parts) > 2 or os.path.isabs(image["file_name"]):
        raise DatasetFormatError(
            f"{path}: images[{i}] (id {image['id']}) has file_name {image['file_name']!r}; "
            "Detectron2's LVIS loader finds an image as image_root/<folder>/<file>, so file_name "
            "must be '<file>' or '<folder>/<file>' relative to --image-root. Pass as "
            "--image-root the folder that holds the images' folders.")
    return ["."] + parts if len(parts) == 1 else parts


def _convert_split(path: str, data: dict, cat_map: Dict[int, int], cats: List[dict],
                   exhaustive: bool, train: bool, image_root: str, stats: dict) -> dict:
    K = len(cats)
    images, anns, present = [], [], {}
    for a in data["annotations"]:
        present.setdefault(a["image_id"], set()).add(cat_map[a["category_id"]])
    missing = []
    for i, im in enumerate(data["images"]):
        folder, file = _image_path(path, i, im)
        if not os.path.exists(os.path.join(image_root, folder, file)):
            missing.append(os.path.join(image_root, folder, file))
        here = present.get(im["id"], set())
        if "neg_category_ids" in im:
            neg = sorted(cat_map[c] for c in im["neg_category_ids"] if c in cat_map)
        else:
            neg = [c for c in range(1, K + 1) if c not in here] if exhaustive else []
        nel = sorted(cat_map[c] for c in im.get("not_exhaustive_category_ids", ()) if c in cat_map)
        images.append({"id": im["id"], "width": im["width"], "height": im["height"],
                       "file_name": file, "coco_url": f"{folder}/{file}",
                       "neg_category_ids": neg, "not_exhaustive_category_ids": nel})
    if missing:
        raise DatasetFormatError(
            f"{path}: {len(missing)} of its {len(images)} images are not under --image-root "
            f"{image_root}, e.g. {', '.join(missing[:3])}. Pass the folder the file names are "
            "relative to as --image-root.")
    crowd = 0
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        out = {"id": a["id"], "image_id": a["image_id"], "category_id": cat_map[a["category_id"]],
               "bbox": [x, y, w, h], "area": a.get("area", w * h)}
        segm = a.get("segmentation")
        polygons = isinstance(segm, list) and segm and all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segm)
        out["segmentation"] = segm if polygons else [[x, y, x + w, y, x + w, y + h, x, y + h]]
        if a.get("iscrowd", 0):
            crowd += 1
            if train:
                continue
            out["ignore"] = 1
        anns.append(out)
    stats.update(images=len(images), instances=len(anns) - (0 if train else crowd), crowd=crowd)
    return {"info": data.get("info", {}), "licenses": data.get("licenses", []),
            "images": images, "annotations": anns, "categories": cats}


def convert_long_tail(train_json: str, val_json: str, image_root: str, out_dir: str, *,
                      rare_max: int = 10, common_max: int = 100, exhaustive: bool = True) -> dict:
    """Write ``out_dir/train.json`` and ``out_dir/val.json`` (see the module docstring);
    the inputs are only read. Returns a summary dict (see :func:`format_summary`)."""
    if not 0 <= rare_max < common_max:
        raise DatasetFormatError(f"--rare-max {rare_max} must be >= 0 and below --common-max "
                                 f"{common_max} (LVIS: 10 and 100).")
    out_dir = os.path.abspath(out_dir)
    outputs = {s: os.path.join(out_dir, f"{s}.json") for s in ("train", "val")}
    for given in (train_json, val_json):
        if os.path.abspath(given) in outputs.values():
            raise DatasetFormatError(f"--out {out_dir} would overwrite the input {given}; the "
                                     "inputs are never modified: choose another --out folder.")
    train, val = read_annotation_file(train_json), read_annotation_file(val_json)
    src = sorted(train["categories"], key=lambda c: c["id"])
    names = {c["id"]: c["name"] for c in src}
    for i, c in enumerate(val["categories"]):
        if names.get(c["id"], c["name"]) != c["name"] or c["id"] not in names:
            raise DatasetFormatError(
                f"{val_json}: categories[{i}] (id {c['id']}, name {c['name']!r}) is not among the "
                f"training file's categories ({train_json}: id {c['id']} is "
                f"{names.get(c['id'], 'absent')!r}). Both files must use the training file's "
                "category ids and names.")
    renumber = [c["id"] for c in src] != list(range(1, len(src) + 1))
    cat_map = {c["id"]: (k + 1 if renumber else c["id"]) for k, c in enumerate(src)}
    images_per_class, instances = Counter(), Counter()
    seen = set()
    for a in train["annotations"]:
        if a.get("iscrowd", 0):
            continue
        instances[a["category_id"]] += 1
        if (a["image_id"], a["category_id"]) not in seen:
            seen.add((a["image_id"], a["category_id"]))
            images_per_class[a["category_id"]] += 1
    cats = []
    for c in src:
        n = images_per_class[c["id"]]
        cat = {k: v for k, v in c.items() if k not in ("id", "original_id")}
        cat.update(id=cat_map[c["id"]], name=c["name"], image_count=n, instance_count=instances[c["id"]],
                   frequency=frequency_group(n, rare_max, common_max))
        cat["original_id"] = c.get("original_id", c["id"])
        cats.append(cat)
    summary = {"classes": len(cats), "renumbered": renumber, "exhaustive": exhaustive,
               "groups": Counter(c["frequency"] for c in cats),
               "unseen": [c["name"] for c in cats if c["image_count"] == 0],
               "train": {}, "val": {}, "outputs": outputs, "image_root": os.path.abspath(image_root)}
    os.makedirs(out_dir, exist_ok=True)
    for split, data, path in (("train", train, train_json), ("val", val, val_json)):
        out = _convert_split(path, data, cat_map, cats, exhaustive, split == "train",
                             image_root, summary[split])
        write_json_atomic(outputs[split], out, indent=None)
    return summary


def format_summary(s: dict) -> str:
    """The summary printed by ``tools/prepare_long_tail.py``."""
    g = s["groups"]
    lines = [
        f"{s['classes']} classes: {g.get('r', 0)} rare, {g.get('c', 0)} common, {g.get('f', 0)} "
        "frequent (by training images)" + (", ids renumbered 1..K (input id kept as original_id)"
                                           if s["renumbered"] else ""),
        *(f"{split}: {s[split]['images']} images, {s[split]['instances']} instances"
          + (f" ({s[split]['crowd']} crowd regions {'dropped' if split == 'train' else 'ignored'})"
             if s[split]["crowd"] else "") for split in ("train", "val")),
    ]
    if s["unseen"]:
        lines.append(f"{len(s['unseen'])} classes have no training instance (counted as rare): "
                     f"{', '.join(s['unseen'][:5])}{' ...' if len(s['unseen']) > 5 else ''}")
    lines.append(
        "neg_category_ids: every class absent from an image (exhaustive annotation), so "
        "detections of absent classes count as false positives" if s["exhaustive"] else
        "neg_category_ids: none (--not-exhaustive); LVIS evaluation then ignores a detection of "
        "a class on every image where that class is not annotated, so false positives on such "
        "images are not counted and AP is optimistic")
    lines.append(f"wrote {s['outputs']['train']} and {s['outputs']['val']}")
    return "\n".join(lines)
