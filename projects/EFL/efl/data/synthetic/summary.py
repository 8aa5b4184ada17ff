"""What a generated split holds per class and frequency group, and the command line
(``python -m efl.data.synthetic``)."""

import argparse
import json
import time
from typing import Dict, List, Optional, Sequence

from ...records import FREQUENCY_GROUPS
from .config import SyntheticLongTailConfig
from .write import generate_synthetic_lvis, is_complete

__all__ = ["class_frequency_table", "summarize_split", "main"]


def class_frequency_table(json_path) -> List[dict]:
    """Per category (by id): name, frequency, the image_count / instance_count stored in
    the categories (training counts), and the counts measured in this file's annotations."""
    with open(json_path) as f:
        data = json.load(f)
    imgs: Dict[int, set] = {}
    inst: Dict[int, int] = {}
    for a in data["annotations"]:
        imgs.setdefault(a["category_id"], set()).add(a["image_id"])
        inst[a["category_id"]] = inst.get(a["category_id"], 0) + 1
    rows = []
    for c in sorted(data["categories"], key=lambda c: c["id"]):
        rows.append(
            {
                "id": c["id"],
                "name": c["name"],
                "frequency": c.get("frequency"),
                "image_count": c.get("image_count"),
                "instance_count": c.get("instance_count"),
                "images_in_file": len(imgs.get(c["id"], ())),
                "instances_in_file": inst.get(c["id"], 0),
            }
        )
    return rows


def summarize_split(json_path) -> dict:
    """Images, instances and, per frequency group, classes / images / instances of a file."""
    with open(json_path) as f:
        n_images = len(json.load(f)["images"])
    rows = class_frequency_table(json_path)
    out = {"images": n_images, "instances": sum(r["instances_in_file"] for r in rows), "groups": {}}
    for g in FREQUENCY_GROUPS:
        rs = [r for r in rows if r["frequency"] == g]
        out["groups"][g] = {
            "classes": len(rs),
            "instances": sum(r["instances_in_file"] for r in rs),
            "images_per_class": [min((r["images_in_file"] for r in rs), default=0),
                                 max((r["images_in_file"] for r in rs), default=0)],
            "instances_per_class": [min((r["instances_in_file"] for r in rs), default=0),
                                    max((r["instances_in_file"] for r in rs), default=0)],
        }  # fmt: skip
    return out


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, str]:
    d = SyntheticLongTailConfig()
    p = argparse.ArgumentParser(
        prog="python -m efl.data.synthetic",
        description="Generate (or reuse) the synthetic long-tailed LVIS-format dataset.",
    )
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-classes", type=int, default=d.num_classes)
    p.add_argument("--num-train-images", type=int, default=d.num_train_images)
    p.add_argument("--num-val-images", type=int, default=d.num_val_images)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--families", type=int, default=d.families,
                   help="families of a frequent parent and marked relatives (0: none)")
    p.add_argument("--family-size", type=int, default=d.family_size)
    p.add_argument("--force", action="store_true", help="regenerate even if cached")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = SyntheticLongTailConfig(
        num_classes=a.num_classes,
        num_train_images=a.num_train_images,
        num_val_images=a.num_val_images,
        image_size=a.image_size,
        seed=a.seed,
        families=a.families,
        family_size=a.family_size,
    )
    t0 = time.perf_counter()
    cached = not a.force and is_complete(a.root, cfg)
    paths = generate_synthetic_lvis(a.root, cfg, progress=not a.no_progress, force=a.force)
    dt = time.perf_counter() - t0
    print(f"{'reused' if cached else 'generated'} {paths['root']} in {dt:.1f} s")
    for k in ("train_json", "val_json", "image_root"):
        print(f"  {k}: {paths[k]}")
    for split, key in (("train", "train_json"), ("val", "val_json")):
        s = summarize_split(paths[key])
        groups = ", ".join(
            f"{g}: {v['classes']} classes / {v['instances']} inst "
            f"({v['images_per_class'][0]}-{v['images_per_class'][1]} img/class)"
            for g, v in s["groups"].items()
        )
        print(f"  {split}: {s['images']} images, {s['instances']} instances; {groups}")
    return paths
