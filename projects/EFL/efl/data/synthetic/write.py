"""Writing a dataset: both splits' images and LVIS-format JSON files into a temporary
folder, renamed into place when complete, with a manifest that keys the cache."""

import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from ...io import remove_stale_dirs, replace_dir, temporary_dir
from ...records import FREQUENCY_GROUPS
from .config import SyntheticLongTailConfig
from .draw import render_image
from .tail import frequency_group, plan_splits

__all__ = ["dataset_paths", "generate_synthetic_lvis", "is_complete"]

# Bump when the output for a given config changes (invalidates cached datasets).
FORMAT_VERSION = 1

TRAIN_SPLIT = "train2017"
VAL_SPLIT = "val2017"
TRAIN_JSON = "lvis_synthetic_train.json"
VAL_JSON = "lvis_synthetic_val.json"
MANIFEST = "_DONE.json"
URL_PREFIX = "http://synthetic.invalid"
_OWNED_NAMES = frozenset({TRAIN_SPLIT, VAL_SPLIT, TRAIN_JSON, VAL_JSON, MANIFEST})
_VAL_ID_OFFSET = 1_000_000  # val image ids never collide with train ids


def dataset_paths(root) -> Dict[str, str]:
    """Absolute paths of a generated dataset (whether or not it exists yet)."""
    root = os.path.abspath(os.fspath(root))
    return {
        "root": root,
        "train_json": os.path.join(root, TRAIN_JSON),
        "val_json": os.path.join(root, VAL_JSON),
        "image_root": os.path.join(root, ""),  # trailing "/": load_lvis_json concatenates
        "manifest": os.path.join(root, MANIFEST),
    }


def _write_split(
    folder: Path,
    split: str,
    split_code: int,
    members: List[List[int]],
    visuals: List[dict],
    cfg: SyntheticLongTailConfig,
    id_offset: int,
    ann_id_start: int,
    pbar,
) -> Tuple[List[dict], List[dict]]:
    """Draw and save the images of one split; returns its LVIS ``images`` and
    ``annotations`` (ids from ``id_offset + 1`` and ``ann_id_start``)."""
    (folder / split).mkdir(parents=True, exist_ok=True)
    K = cfg.num_classes
    images, anns = [], []
    ann_id = ann_id_start
    for i, classes in enumerate(members):
        rng = np.random.default_rng([cfg.seed, split_code, i])
        img, _, objects = render_image(rng, classes, visuals, cfg)
        image_id = id_offset + i + 1
        file_name = f"{image_id:012d}.png"
        Image.fromarray(img).save(folder / split / file_name, format="PNG", compress_level=1)
        present = {c + 1 for c, _ in objects}
        images.append(
            {
                "id": image_id,
                "width": cfg.image_size,
                "height": cfg.image_size,
                "file_name": file_name,
                "coco_url": f"{URL_PREFIX}/{split}/{file_name}",
                "neg_category_ids": [c for c in range(1, K + 1) if c not in present],
                "not_exhaustive_category_ids": [],
            }
        )
        for c, (x, y, w, h) in objects:
            x0, y0, x1, y1 = float(x), float(y), float(x + w), float(y + h)
            anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": c + 1,
                    "bbox": [x0, y0, float(w), float(h)],
                    "area": float(w * h),
                    "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                }
            )
            ann_id += 1
        if pbar is not None:
            pbar.update(1)
    return images, anns


def _categories(visuals: List[dict], train_anns: List[dict], cfg: SyntheticLongTailConfig) -> List[dict]:
    K = len(visuals)
    inst = np.zeros(K, dtype=np.int64)
    imgs = [set() for _ in range(K)]
    for a in train_anns:
        inst[a["category_id"] - 1] += 1
        imgs[a["category_id"] - 1].add(a["image_id"])
    cats = []
    for j, v in enumerate(visuals):
        n_img = len(imgs[j])
        pat = "" if v["pattern"] == "solid" else f"{v['pattern']} "
        cats.append(
            {
                "id": j + 1,
                "name": v["name"],
                "synset": f"{v['name']}.n.01",
                "synonyms": [v["name"]],
                "def": f"a {pat}{v['color']} {v['shape']}",
                "frequency": frequency_group(n_img, cfg.rare_max_images, cfg.common_max_images),
                "image_count": n_img,
                "instance_count": int(inst[j]),
                "shape": v["shape"],
                "color": v["color"],
                "pattern": v["pattern"],
            }
        )
        if "mark" in v:  # family data: the mark and the family (parent: mark "none")
            cats[-1].update(mark=v["mark"], family=v["family"])
            if v["mark"] != "none":
                cats[-1]["def"] += f" with a {v['mark']} mark"
    return cats


def _dump_json(obj, path: Path) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def _generate_into(folder: Path, cfg: SyntheticLongTailConfig, progress: bool) -> dict:
    plan = plan_splits(cfg)
    total = cfg.num_train_images + cfg.num_val_images
    pbar = None
    try:
        from tqdm import tqdm

        pbar = tqdm(total=total, desc="synthetic LVIS", unit="img", disable=not progress)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        pass
    try:
        tr_imgs, tr_anns = _write_split(folder, TRAIN_SPLIT, 1, plan.train, plan.visuals, cfg, 0, 1, pbar)
        va_imgs, va_anns = _write_split(
            folder, VAL_SPLIT, 2, plan.val, plan.visuals, cfg, _VAL_ID_OFFSET, len(tr_anns) + 1, pbar
        )
    finally:
        if pbar is not None:
            pbar.close()
    cats = _categories(plan.visuals, tr_anns, cfg)
    info = {
        "description": "Synthetic long-tailed LVIS-format dataset (efl.data.synthetic)",
        "version": str(FORMAT_VERSION),
        "seed": cfg.seed,
    }
    for name, imgs, anns in ((TRAIN_JSON, tr_imgs, tr_anns), (VAL_JSON, va_imgs, va_anns)):
        _dump_json(
            {"info": info, "licenses": [], "images": imgs, "annotations": anns, "categories": cats},
            folder / name,
        )
    groups = {g: sum(c["frequency"] == g for c in cats) for g in FREQUENCY_GROUPS}
    manifest = {
        "generator": "efl.data.synthetic",
        "format_version": FORMAT_VERSION,
        "config": cfg.cache_key(),
        "files": {"train_json": TRAIN_JSON, "val_json": VAL_JSON, "splits": [TRAIN_SPLIT, VAL_SPLIT]},
        "num_images": {TRAIN_SPLIT: len(tr_imgs), VAL_SPLIT: len(va_imgs)},
        "num_annotations": {TRAIN_SPLIT: len(tr_anns), VAL_SPLIT: len(va_anns)},
        "frequency_groups": groups,
    }
    _dump_json(manifest, folder / MANIFEST)  # last: marks the folder complete
    return manifest


def _read_manifest(root: Path) -> Optional[dict]:
    try:
        with open(root / MANIFEST) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_complete(root, cfg: Optional[SyntheticLongTailConfig] = None) -> bool:
    """True if ``root`` holds a complete dataset generated by this version with ``cfg``."""
    root = Path(root)
    cfg = cfg or SyntheticLongTailConfig()
    m = _read_manifest(root)
    if not m or m.get("format_version") != FORMAT_VERSION or m.get("config") != cfg.cache_key():
        return False
    if not ((root / TRAIN_JSON).is_file() and (root / VAL_JSON).is_file()):
        return False
    for split, n in m.get("num_images", {}).items():
        try:
            if sum(1 for _ in os.scandir(root / split)) != n:
                return False
        except OSError:
            return False
    return True


def _check_owned(root: Path) -> None:
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder")
    foreign = sorted(set(os.listdir(root)) - _OWNED_NAMES)
    if foreign:
        raise FileExistsError(
            f"{root} holds files that the synthetic dataset generator did not write "
            f"({foreign[:5]}); refusing to replace it. Use an empty or new folder."
        )


def generate_synthetic_lvis(
    root, cfg: Optional[SyntheticLongTailConfig] = None, progress: bool = True, force: bool = False
) -> Dict[str, str]:
    """Generate (or reuse) the synthetic long-tailed LVIS-format dataset under ``root``.

    Args:
        root: dataset folder (created; replaced if it holds an incomplete dataset or one
            with other parameters, and nothing else).
        cfg: parameters; default :class:`SyntheticLongTailConfig()`.
        progress: show a tqdm progress bar while writing images.
        force: regenerate even if a complete dataset with the same parameters exists.

    Returns:
        dict with absolute paths: "train_json", "val_json", "image_root" (ends with the
        path separator, as ``load_lvis_json`` needs), "root", "manifest".
    """
    cfg = cfg or SyntheticLongTailConfig()
    root = Path(os.path.abspath(os.fspath(root)))
    paths = dataset_paths(root)
    if not force and is_complete(root, cfg):
        return paths
    _check_owned(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_dirs(root)

    tmp = Path(temporary_dir(root))
    try:
        _generate_into(tmp, cfg, progress)
        if not force and is_complete(root, cfg):  # a concurrent run finished first
            return paths
        _check_owned(root)
        try:
            replace_dir(tmp, root)
        except OSError:
            # another process (e.g. a second worker) put its copy in place meanwhile
            if not is_complete(root, cfg):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return paths
