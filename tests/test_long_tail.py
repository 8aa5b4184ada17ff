"""Own data: COCO-format files (the embedded dataset rewritten, one variant with category-id
gaps) -> tools/prepare_long_tail.py -> LVIS format with r/c/f -> a Custom config trains
and evaluates (APr/APc/APf); refusals are one paragraph naming file, entry and field."""

import hashlib
import json
import os
from collections import defaultdict

import pytest

from helpers import ROOT
from efl.errors import ConfigError, DatasetFormatError

RARE_MAX, COMMON_MAX = 3, 10  # the tiny dataset's thresholds


def _md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def _as_coco(lvis_json, out_json, id_of=lambda c: c):
    """An LVIS-format file of the embedded dataset rewritten as a COCO file: file_name
    relative to the image root, no coco_url / frequency / neg lists, class ids ``id_of``."""
    with open(lvis_json) as f:
        d = json.load(f)
    coco = {
        "images": [{"id": im["id"], "width": im["width"], "height": im["height"],
                    "file_name": "/".join(im["coco_url"].split("/")[-2:])} for im in d["images"]],
        "annotations": [{"id": a["id"], "image_id": a["image_id"], "category_id": id_of(a["category_id"]),
                         "bbox": a["bbox"], "area": a["area"], "iscrowd": 0} for a in d["annotations"]],
        "categories": [{"id": id_of(c["id"]), "name": c["name"], "supercategory": "shape"}
                       for c in d["categories"]],
    }
    with open(out_json, "w") as f:
        json.dump(coco, f)
    return coco


@pytest.fixture(scope="module")
def coco_files(tiny_dataset, tmp_path_factory):
    """COCO-format train/val of the tiny dataset with category ids 10, 13, 16, ... (gaps)."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(f"{tiny_dataset}_train")
    root = tmp_path_factory.mktemp("coco")
    val_json = MetadataCatalog.get(f"{tiny_dataset}_val").json_file
    files = {"image_root": meta.image_root, "dir": root}
    for split, src in (("train", meta.json_file), ("val", val_json)):
        files[split] = str(root / f"{split}.json")
        files[f"{split}_coco"] = _as_coco(src, files[split], id_of=lambda c: 7 + 3 * c)
    return files


def _prepare(coco_files, out, *extra):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "prepare_long_tail", os.path.join(ROOT, "tools", "prepare_long_tail.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main(["--train", coco_files["train"], "--val", coco_files["val"], "--image-root",
                 coco_files["image_root"], "--out", str(out), "--rare-max", str(RARE_MAX),
                 "--common-max", str(COMMON_MAX), *extra])


def test_coco_with_id_gaps(coco_files, tmp_path, capsys):
    """Ids renumbered 1..K in id order with the original kept; counts and r/c/f from the
    training split on both files; neg_category_ids = the absent classes; images resolve
    through Detectron2's LVIS loader; the inputs are unchanged."""
    before = {s: _md5(coco_files[s]) for s in ("train", "val")}
    summary = _prepare(coco_files, tmp_path / "out")
    assert {s: _md5(coco_files[s]) for s in ("train", "val")} == before
    printed = capsys.readouterr().out
    assert "ids renumbered" in printed and "dataset.train_json=" in printed

    coco = coco_files["train_coco"]
    images_of = defaultdict(set)
    for a in coco["annotations"]:
        images_of[a["category_id"]].add(a["image_id"])
    src_ids = sorted(c["id"] for c in coco["categories"])
    with open(tmp_path / "out" / "train.json") as f:
        train = json.load(f)
    with open(tmp_path / "out" / "val.json") as f:
        val = json.load(f)
    assert train["categories"] == val["categories"]
    assert [c["id"] for c in train["categories"]] == list(range(1, len(src_ids) + 1))
    assert [c["original_id"] for c in train["categories"]] == src_ids
    for c in train["categories"]:
        n = len(images_of[c["original_id"]])
        assert c["image_count"] == n
        assert c["frequency"] == ("r" if n <= RARE_MAX else "c" if n <= COMMON_MAX else "f")
    groups = {c["frequency"] for c in train["categories"]}
    assert groups == {"r", "c", "f"}, groups
    assert summary["groups"] == {g: sum(c["frequency"] == g for c in train["categories"]) for g in groups}
    new_id = {c["original_id"]: c["id"] for c in train["categories"]}
    assert sorted((a["id"], a["category_id"]) for a in train["annotations"]) == sorted(
        (a["id"], new_id[a["category_id"]]) for a in coco["annotations"])
    present = defaultdict(set)
    for a in val["annotations"]:
        present[a["image_id"]].add(a["category_id"])
    for im in val["images"]:
        assert set(im["neg_category_ids"]) == set(range(1, len(src_ids) + 1)) - present[im["id"]]

    from detectron2.data import DatasetCatalog
    from efl.data.lvis import prepare_datasets, register_lvis_format

    register_lvis_format("lt_gaps_val", str(tmp_path / "out" / "val.json"), coco_files["image_root"])
    prepare_datasets(["lt_gaps_val"])
    records = DatasetCatalog.get("lt_gaps_val")
    assert len(records) == len(val["images"]) and all(os.path.isfile(r["file_name"]) for r in records)


def test_not_exhaustive(coco_files, tmp_path, capsys):
    _prepare(coco_files, tmp_path / "out", "--not-exhaustive")
    with open(tmp_path / "out" / "val.json") as f:
        assert all(im["neg_category_ids"] == [] for im in json.load(f)["images"])
    assert "false positives on such images are not counted" in capsys.readouterr().out


@pytest.mark.parametrize("field, value, expected", [
    ("category_id", 5, r"annotations\[3\] \(id \d+\) has category_id 5, which is not the id"),
    ("image_id", -1, r"annotations\[3\] \(id \d+\) has image_id -1"),
    ("bbox", [1, 2, 3], r"annotations\[3\] \(id \d+\) has bbox \[1, 2, 3\]"),
])
def test_refusals(coco_files, tmp_path, capsys, field, value, expected):
    """Inconsistent input: exit 2, one paragraph naming file, entry and field, no output."""
    bad = json.loads(json.dumps(coco_files["train_coco"]))
    bad["annotations"][3][field] = value
    path = tmp_path / "bad_train.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(SystemExit) as e:
        _prepare(dict(coco_files, train=str(path)), tmp_path / "out")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ERROR: {path}: ") and len(err.strip().splitlines()) == 1
    import re
    assert re.search(expected, err), err
    assert not (tmp_path / "out" / "train.json").exists()
    with pytest.raises(DatasetFormatError, match="would overwrite the input"):
        from efl.data.long_tail import convert_long_tail
        convert_long_tail(coco_files["train"], coco_files["val"], coco_files["image_root"],
                          os.path.dirname(coco_files["train"]))


def _custom_config(name, *overrides):
    from efl.data.custom import setup_custom_dataset
    from efl.engine import load_config

    cfg = load_config(os.path.join(ROOT, "configs", "Custom", name), ["train.device=cpu", *overrides])
    return setup_custom_dataset(cfg)


def test_custom_config_keys(coco_files, tmp_path):
    """A missing or wrong dataset key, or an unprepared file: a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"dataset.train_json is not set.*prepare_long_tail"):
        _custom_config("retinanet_efl.py")
    with pytest.raises(ConfigError, match=r"Did you mean 'dataset.train_json'"):
        _custom_config("retinanet_efl.py", "dataset.train_jsn=x.json")
    with pytest.raises(ConfigError, match=r"dataset.val_json=/nope.json is not an existing file"):
        _custom_config("improved_focal.py", f"dataset.train_json={coco_files['train']}",
                       "dataset.val_json=/nope.json", f"dataset.image_root={coco_files['image_root']}")
    # a raw COCO file (ids with gaps, no frequency) is refused with the tool named
    with pytest.raises(ConfigError, match=r"dataset.train_json=.*prepare_long_tail"):
        _custom_config("retinanet_focal.py", f"dataset.train_json={coco_files['train']}",
                       f"dataset.val_json={coco_files['val']}",
                       f"dataset.image_root={coco_files['image_root']}", "dataset.name=lt_raw")


@pytest.mark.slow
def test_custom_config_trains_and_evaluates(coco_files, tmp_path):
    """The tool's output -> configs/Custom/retinanet_efl.py (R-50, shrunk to 96-128 px
    images, 3 iterations, no ImageNet download) trains on CPU and reports APr/APc/APf and
    APfixed; num_classes and the EFL groups follow from the file."""
    from efl.engine import Trainer

    _prepare(coco_files, tmp_path / "lt")
    out = tmp_path / "run"
    cfg = _custom_config(
        "retinanet_efl.py", f"dataset.train_json={tmp_path / 'lt' / 'train.json'}",
        f"dataset.val_json={tmp_path / 'lt' / 'val.json'}",
        f"dataset.image_root={coco_files['image_root']}", "dataset.name=lt_run")
    assert cfg.model.num_classes == len(coco_files["train_coco"]["categories"])
    cfg.train.init_checkpoint = ""
    cfg.train.max_iter, cfg.train.eval_period, cfg.train.checkpointer.period = 3, 0, 100
    cfg.train.output_dir, cfg.train.log_period = str(out), 1
    cfg.lr_multiplier.scheduler.milestones = [2, 3]
    cfg.lr_multiplier.warmup_length = 1 / 3
    for loader in (cfg.dataloader.train, cfg.dataloader.test):
        loader.num_workers = 0
        loader.mapper.augmentations[0].short_edge_length = 96
        loader.mapper.augmentations[0].max_size = 128
    cfg.dataloader.train.total_batch_size = 2
    cfg.dataloader.evaluator.fixed_per_class = 10000
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(out / "results.json") as f:
        bbox = json.load(f)["results"]["bbox"]  # NaN if the model predicted nothing
    for key in ("AP", "APr", "APc", "APf", "APfixed", "APr_fixed", "APc_fixed", "APf_fixed"):
        assert 0.0 <= bbox[key] <= 100.0, (key, bbox[key])
    from efl.data.lvis import frequency_groups

    with open(tmp_path / "lt" / "train.json") as f:
        expected = [c["frequency"] for c in json.load(f)["categories"]]
    assert frequency_groups("lt_run_train") == expected and len(set(expected)) == 3


@pytest.mark.parametrize("custom, recipe", [
    ("retinanet_efl.py", "retinanet_R_50_FPN_2x_efl.py"),
    ("retinanet_focal.py", "retinanet_R_50_FPN_2x_focal.py"),
    ("improved_efl.py", "efl_improved_R_50_FPN_24ep.py"),
    ("improved_focal.py", "focal_improved_R_50_FPN_24ep.py"),
])
def test_custom_configs_are_the_lvis_recipes(custom, recipe):
    """Same model (R-50, ImageNet init), optimiser, schedule and loaders as the LVIS recipe
    but the dataset names, num_classes (from the file) and the output folder."""
    from detectron2.config import LazyConfig
    from omegaconf import OmegaConf

    a = LazyConfig.load(os.path.join(ROOT, "configs", "Custom", custom))
    b = LazyConfig.load(os.path.join(ROOT, "configs", "LVISv1", recipe))
    assert a.model.num_classes is None and b.model.num_classes == 1203
    a.model.num_classes = b.model.num_classes
    if "class_groups" in b.model.get("cls_loss", {}):
        assert a.model.cls_loss.class_groups.dataset_name == "custom_train"  # resolved from dataset.name
        a.model.cls_loss.class_groups.dataset_name = b.model.cls_loss.class_groups.dataset_name
    assert a.dataloader.train.dataset.names == "custom_train"  # resolved from dataset.name
    assert a.dataloader.test.dataset.names == "custom_val"
    a.dataloader.train.dataset.names = b.dataloader.train.dataset.names
    a.dataloader.test.dataset.names = b.dataloader.test.dataset.names
    a.train.output_dir = b.train.output_dir
    assert a.train.init_checkpoint == (  # torchvision's for the authors' detector
        "https://download.pytorch.org/models/resnet50-19c8e357.pth" if "improved" in custom
        else "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    )
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        assert OmegaConf.to_container(a[key]) == OmegaConf.to_container(b[key]), key
    assert set(a.dataset) == {"name", "train_json", "val_json", "image_root"}
