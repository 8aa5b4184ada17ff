"""The embedded long-tailed synthetic LVIS-format dataset (efl.data.synthetic): format,
long-tail statistics, LVIS evaluation rules, determinism, caching, and that Detectron2 and
the lvis API read it. Uses a tiny configuration (a second or so per generation)."""

import collections
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efl.data import synthetic as syn
from efl.evaluation import lvis_numpy_aliases
from efl.data.synthetic import (
    SyntheticLongTailConfig,
    class_frequency_table,
    frequency_group,
    generate_synthetic_lvis,
    is_complete,
    plan_train_image_counts,
    summarize_split,
)

# Tiny: 12 classes, 40 + 24 images of 64 px. Thresholds scaled down (rare <= 3 images,
# common <= 10) so that all three frequency groups are populated at this size.
TINY = SyntheticLongTailConfig(
    num_classes=12,
    num_train_images=40,
    num_val_images=24,
    image_size=64,
    min_object_size=10,
    max_object_size=22,
    min_images_per_class=1,
    rare_max_images=3,
    common_max_images=10,
    seed=0,
)


def _files(root):
    """Relative path -> bytes of every file under root."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    paths = generate_synthetic_lvis(root, TINY, progress=False)
    return paths


@pytest.fixture(scope="module")
def train(tiny):
    return _load(tiny["train_json"])


@pytest.fixture(scope="module")
def val(tiny):
    return _load(tiny["val_json"])


# --------------------------------------------------------------------- the long tail


def test_default_config_is_lvis_like_long_tail():
    cfg = SyntheticLongTailConfig()
    counts = np.array(plan_train_image_counts(cfg))
    assert len(counts) == cfg.num_classes >= 100
    groups = collections.Counter(frequency_group(int(n)) for n in counts)  # LVIS thresholds
    assert groups["r"] > cfg.num_classes / 2, groups  # most classes rare
    assert groups["c"] >= 5 and groups["f"] >= 5, groups  # several common and frequent
    assert counts.min() == cfg.min_images_per_class and counts.max() <= cfg.num_train_images
    # identities are shuffled relative to rank: counts are not sorted by category id
    assert not (np.all(np.diff(counts) <= 0) or np.all(np.diff(counts) >= 0))


def test_plan_matches_generated_counts(tiny, train):
    planned = plan_train_image_counts(TINY)
    cats = sorted(train["categories"], key=lambda c: c["id"])
    assert [c["image_count"] for c in cats] == planned


# --------------------------------------------------------------------- format and stats


def test_paths_and_layout(tiny):
    assert tiny["image_root"].endswith(os.sep)
    root = Path(tiny["root"])
    assert sorted(os.listdir(root)) == sorted(
        [syn.TRAIN_SPLIT, syn.VAL_SPLIT, syn.TRAIN_JSON, syn.VAL_JSON, syn.MANIFEST]
    )
    assert Path(tiny["train_json"]).is_file() and Path(tiny["val_json"]).is_file()


def test_categories(train, val):
    cats = sorted(train["categories"], key=lambda c: c["id"])
    assert [c["id"] for c in cats] == list(range(1, TINY.num_classes + 1))
    assert len({c["name"] for c in cats}) == len(cats)
    for c in cats:
        assert {"name", "synset", "frequency", "image_count", "instance_count"} <= set(c)
    assert val["categories"] == train["categories"]  # same list, training counts


def test_counts_match_train_annotations(tiny, train):
    imgs, inst = collections.defaultdict(set), collections.Counter()
    for a in train["annotations"]:
        imgs[a["category_id"]].add(a["image_id"])
        inst[a["category_id"]] += 1
    for c in train["categories"]:
        assert c["image_count"] == len(imgs[c["id"]]) >= 1
        assert c["instance_count"] == inst[c["id"]] >= c["image_count"]
    for row in class_frequency_table(tiny["train_json"]):  # the helper agrees
        assert row["images_in_file"] == row["image_count"]
        assert row["instances_in_file"] == row["instance_count"]


def test_frequency_groups_follow_thresholds(train):
    groups = collections.Counter()
    for c in train["categories"]:
        n = c["image_count"]
        expected = "r" if n <= TINY.rare_max_images else "c" if n <= TINY.common_max_images else "f"
        assert c["frequency"] == expected == frequency_group(n, 3, 10)
        groups[expected] += 1
    assert all(groups[g] >= 1 for g in "rcf"), groups


def test_lvis_default_thresholds():
    assert [frequency_group(n) for n in (1, 10, 11, 100, 101)] == ["r", "r", "c", "c", "f"]


def test_neg_category_ids_are_the_complement(train, val):
    all_ids = set(range(1, TINY.num_classes + 1))
    for data in (train, val):
        present = collections.defaultdict(set)
        for a in data["annotations"]:
            present[a["image_id"]].add(a["category_id"])
        for im in data["images"]:
            assert present[im["id"]], "every image has objects"
            assert set(im["neg_category_ids"]) == all_ids - present[im["id"]]
            assert len(im["neg_category_ids"]) == len(set(im["neg_category_ids"]))
            assert im["not_exhaustive_category_ids"] == []


def test_val_is_class_balanced(val):
    imgs, inst = collections.defaultdict(set), collections.Counter()
    for a in val["annotations"]:
        imgs[a["category_id"]].add(a["image_id"])
        inst[a["category_id"]] += 1
    per_class = [len(imgs[c]) for c in range(1, TINY.num_classes + 1)]
    assert min(per_class) >= 5 and max(per_class) - min(per_class) <= 1, per_class
    assert all(inst[c] >= len(imgs[c]) for c in imgs)


def test_images_and_boxes(tiny, train, val):
    S = TINY.image_size
    for data, split in ((train, syn.TRAIN_SPLIT), (val, syn.VAL_SPLIT)):
        ids = [im["id"] for im in data["images"]]
        assert len(ids) == len(set(ids))
        for im in data["images"]:
            assert (im["width"], im["height"]) == (S, S)
            assert im["coco_url"] == f"http://synthetic.invalid/{split}/{im['file_name']}"
            path = Path(tiny["image_root"]) / split / im["file_name"]
            with Image.open(path) as pil:
                assert pil.size == (S, S) and pil.mode == "RGB"
        ann_ids = [a["id"] for a in data["annotations"]]
        assert len(ann_ids) == len(set(ann_ids))
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= S and y + h <= S
            assert a["area"] == pytest.approx(w * h)
            assert a["segmentation"] == [[x, y, x + w, y, x + w, y + h, x, y + h]]
            assert 1 <= a["category_id"] <= TINY.num_classes
    assert not set(im["id"] for im in train["images"]) & set(im["id"] for im in val["images"])


def test_pixels_show_the_objects(tiny, train):
    """Re-rendering reproduces the PNG; inside every box the pixels differ clearly from the
    object-free background, outside all boxes only by the pixel noise."""
    plan = syn.tail.plan_splits(TINY)
    anns = collections.defaultdict(list)
    for a in train["annotations"]:
        anns[a["image_id"]].append(a)
    for i in range(8):
        rng = np.random.default_rng([TINY.seed, 1, i])
        img, bg, objects = syn.draw.render_image(rng, plan.train[i], plan.visuals, TINY)
        im = train["images"][i]
        on_disk = np.asarray(Image.open(Path(tiny["image_root"]) / syn.TRAIN_SPLIT / im["file_name"]))
        assert np.array_equal(img, on_disk)
        assert [a["bbox"] for a in anns[im["id"]]] == [[float(v) for v in b] for _, b in objects]
        diff = np.abs(img.astype(np.float32) - bg).mean(-1)
        outside = np.ones(diff.shape, bool)
        for _, (x, y, w, h) in objects:
            assert diff[y : y + h, x : x + w].mean() > 25
            outside[y : y + h, x : x + w] = False
        assert diff[outside].mean() < 10


# --------------------------------------------------------------------- readers


def test_lvis_api_loads(tiny, train):
    from lvis import LVIS

    for key in ("train_json", "val_json"):
        api = LVIS(tiny[key])
        assert sorted(api.get_cat_ids()) == list(range(1, TINY.num_classes + 1))
    assert len(LVIS(tiny["train_json"]).get_img_ids()) == TINY.num_train_images


def test_detectron2_load_lvis_json(tiny, val):
    from detectron2.data.datasets.lvis import load_lvis_json

    for key, n in (("train_json", TINY.num_train_images), ("val_json", TINY.num_val_images)):
        records = load_lvis_json(tiny[key], tiny["image_root"], dataset_name=None)
        assert len(records) == n
        for r in records:
            assert os.path.isfile(r["file_name"]), r["file_name"]
            assert r["annotations"]
            for o in r["annotations"]:
                assert 0 <= o["category_id"] < TINY.num_classes
    assert len(records) == len(val["images"])


def test_lvis_eval_perfect_and_false_positive(tiny, val):
    had_alias = "float" in np.__dict__
    with lvis_numpy_aliases():  # lvis 0.5.3 on numpy >= 1.24
        _check_lvis_eval_perfect_and_false_positive(tiny, val)
    assert ("float" in np.__dict__) == had_alias  # numpy left as it was


def _check_lvis_eval_perfect_and_false_positive(tiny, val):
    from lvis import LVIS, LVISEval, LVISResults

    gt = LVIS(tiny["val_json"])
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in val["annotations"]
    ]
    ev = LVISEval(gt, LVISResults(gt, perfect), "bbox")
    ev.run()
    assert ev.results["AP"] == pytest.approx(1.0)
    assert ev.results["AP50"] == pytest.approx(1.0)
    for g in ("APr", "APc", "APf"):  # all groups populated in TINY
        assert ev.results[g] == pytest.approx(1.0)

    # A confident detection of a class absent from an image must count as a false
    # positive (possible only because absent classes are in neg_category_ids).
    im = val["images"][0]
    absent = im["neg_category_ids"][0]
    fp = {"image_id": im["id"], "category_id": absent, "bbox": [1.0, 1.0, 12.0, 12.0], "score": 1.5}
    ev = LVISEval(gt, LVISResults(gt, perfect + [fp]), "bbox")
    ev.run()
    assert ev.results["AP"] < 0.999


# --------------------------------------------------------------------- determinism, cache


def test_deterministic_by_seed(tiny, tmp_path):
    again = generate_synthetic_lvis(tmp_path / "again", TINY, progress=False)
    a, b = _files(tiny["root"]), _files(again["root"])
    assert a.keys() == b.keys() and a == b

    other = generate_synthetic_lvis(
        tmp_path / "seed1", SyntheticLongTailConfig(**{**TINY.__dict__, "seed": 1}), progress=False
    )
    c = _files(other["root"])
    assert c[syn.TRAIN_JSON] != a[syn.TRAIN_JSON] and c[syn.VAL_JSON] != a[syn.VAL_JSON]
    pngs = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != c.get(k) for k in pngs) > len(pngs) * 0.9


def _mtimes(root):
    return {str(p): p.stat().st_mtime_ns for p in Path(root).rglob("*")}


def test_cache_reuse_and_regeneration(tmp_path):
    root = tmp_path / "ds"
    paths = generate_synthetic_lvis(root, TINY, progress=False)
    assert is_complete(root, TINY)
    before = _mtimes(root)
    inode = root.stat().st_ino
    assert generate_synthetic_lvis(root, TINY, progress=False) == paths
    assert _mtimes(root) == before and root.stat().st_ino == inode  # nothing rewritten

    # no marker (e.g. an older interrupted run): regenerated, same content
    content = _files(root)
    os.remove(paths["manifest"])
    assert not is_complete(root, TINY)
    generate_synthetic_lvis(root, TINY, progress=False)
    assert is_complete(root, TINY) and _files(root) == content and root.stat().st_ino != inode

    # a missing image makes it incomplete too
    victim = next((root / syn.VAL_SPLIT).iterdir())
    victim.unlink()
    assert not is_complete(root, TINY)
    generate_synthetic_lvis(root, TINY, progress=False)
    assert victim.exists()

    # other parameters: regenerated with them
    cfg2 = SyntheticLongTailConfig(**{**TINY.__dict__, "num_val_images": 20})
    assert not is_complete(root, cfg2)
    generate_synthetic_lvis(root, cfg2, progress=False)
    assert is_complete(root, cfg2) and not is_complete(root, TINY)
    assert len(_load(paths["val_json"])["images"]) == 20
    assert _load(paths["manifest"])["config"]["num_val_images"] == 20

    # no temp or old folders are left next to it
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    # a stale temp folder of a killed run (pid that does not exist) is cleaned up
    (tmp_path / ".ds.tmp-999999999-abc").mkdir()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(syn.write, "_categories", boom)  # after all images were written
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_lvis(root, TINY, progress=False)
    assert not root.exists() and os.listdir(tmp_path) == []
    monkeypatch.undo()
    generate_synthetic_lvis(root, TINY, progress=False)
    assert is_complete(root, TINY)


def test_refuses_to_replace_foreign_folder(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "precious.txt").write_text("do not delete")
    with pytest.raises(FileExistsError):
        generate_synthetic_lvis(root, TINY, progress=False)
    assert (root / "precious.txt").read_text() == "do not delete"


def test_config_validation():
    for bad in (
        {"num_classes": 1},
        {"num_classes": syn.MAX_CLASSES + 1},
        {"min_objects": 3, "max_objects": 2},
        {"max_object_size": 100},
        {"zipf_offset": 0},
        {"rare_max_images": 100, "common_max_images": 10},
    ):
        with pytest.raises(ValueError):
            SyntheticLongTailConfig(**bad)


def test_cli_and_summary(tmp_path, capsys):
    root = tmp_path / "cli"
    args = ["--root", str(root), "--num-classes", "12", "--num-train-images", "30"]
    args += ["--num-val-images", "12", "--image-size", "96", "--seed", "3", "--no-progress"]
    paths = syn.main(args)
    out = capsys.readouterr().out
    assert "generated" in out and paths["train_json"] in out
    manifest = _load(paths["manifest"])
    assert manifest["config"]["seed"] == 3 and manifest["num_images"] == {"train2017": 30, "val2017": 12}
    syn.main(args)
    assert "reused" in capsys.readouterr().out
    s = summarize_split(paths["val_json"])
    assert s["images"] == 12 and sum(g["classes"] for g in s["groups"].values()) == 12
    rows = class_frequency_table(paths["train_json"])
    assert all(r["images_in_file"] == r["image_count"] for r in rows)
