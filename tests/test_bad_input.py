"""Bad input stops with one clear paragraph naming the file / field / value and the fix,
and leaves nothing that looks like a finished run (train_net.py: exit status 2, no stack
trace)."""

import itertools
import json
import logging
import os
import re
import shutil

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from efl.data.lvis import DatasetFilesMissing, prepare_datasets, register_lvis_format
from efl.engine import Trainer, check_efl_hyperparameters, load_config
from efl.errors import ConfigError, DatasetFormatError, ImageUnreadable, InputError
from helpers import ROOT, TINY_CLASSES, tiny_lazy_config
from runs import CONFIG, dataset_root, last_checkpoint, train_net

@pytest.fixture
def register(tmp_path):
    """register(suffix, json_file, image_root) -> name: an LVIS-format dataset under a name
    of this test's own, removed from Detectron2's catalogs afterwards."""
    names = []

    def register_(suffix, json_file, image_root):
        names.append(f"{tmp_path.name}_{suffix}")
        register_lvis_format(names[-1], str(json_file), str(image_root))
        return names[-1]

    yield register_
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.fixture
def load(tmp_path, register):
    """load(content, image_root, raw=False) -> (dataset dicts, json path): ``content`` (a
    dict, or raw text) written, registered as a new dataset and loaded."""
    count = itertools.count()

    def load_(content, image_root, raw=False):
        path = tmp_path / f"annotations_{next(count)}.json"
        path.write_text(content if raw else json.dumps(content))
        name = register(path.stem, path, image_root)
        prepare_datasets([name])
        return DatasetCatalog.get(name), str(path)

    return load_


@pytest.fixture
def tiny_json(tiny_dataset):
    """The tiny training annotations (a dict to edit) and the image root."""
    meta = MetadataCatalog.get(f"{tiny_dataset}_train")
    with open(meta.json_file) as f:
        return json.load(f), meta.image_root


def test_missing_annotation_file_or_root(tmp_path, register):
    name = register("missing", tmp_path / "nowhere" / "train.json", tmp_path)
    with pytest.raises(InputError, match=r"the annotation file .*nowhere/train\.json does not exist"):
        prepare_datasets([name])
    name = register("no_root", tmp_path / "x.json", tmp_path / "no_root")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(InputError, match=r"the image folder .*no_root/ does not exist"):
        prepare_datasets([name])


def test_detectron2_lvis_v1_loads_are_checked_too(tmp_path, monkeypatch):
    """Detectron2's own lvis_v1_val, loaded through its catalog entry: a missing and a
    truncated annotation file are the clear errors of any LVIS-format dataset."""
    json_file = MetadataCatalog.get("lvis_v1_val").json_file
    if os.path.isabs(json_file):
        pytest.skip("DETECTRON2_DATASETS was set when Detectron2 registered lvis_v1_val")
    monkeypatch.chdir(tmp_path)  # the registered paths are relative to the working folder
    with pytest.raises(DatasetFilesMissing, match=r"lvis_v1_val\.json does not exist"):
        prepare_datasets(["lvis_v1_val"])  # a run asks for it: its loads are now checked
    with pytest.raises(DatasetFilesMissing, match=(
        rf"Dataset 'lvis_v1_val': the annotation file {re.escape(json_file)} does not exist\. "
        r"Detectron2 looks for datasets under \$DETECTRON2_DATASETS")):
        DatasetCatalog.get("lvis_v1_val")
    os.makedirs(MetadataCatalog.get("lvis_v1_val").image_root)
    os.makedirs(os.path.dirname(json_file))
    with open(json_file, "w") as f:
        f.write('{"images": [{"id": 1, ')
    with pytest.raises(DatasetFormatError, match=rf"{re.escape(json_file)} is not valid JSON: "):
        DatasetCatalog.get("lvis_v1_val")


def test_invalid_json_names_file_and_position(tiny_json, load):
    data, image_root = tiny_json
    text = json.dumps(data)
    with pytest.raises(DatasetFormatError, match=r"annotations_\d+\.json is not valid JSON: .* "
                       r"at line 1, column \d+ .*looks truncated.*Download or extract it again"):
        load(text[: len(text) // 2], image_root, raw=True)


@pytest.mark.parametrize("edit, message", [
    (lambda d: [1, 2], r"valid JSON but not an LVIS/COCO annotation file: expected an object "
                       r"with the lists 'images', 'annotations' and 'categories', found a list"),
    (lambda d: {"images": d["images"]}, r"'annotations' is missing"),
    (lambda d: d["annotations"][3].pop("bbox") and d, r"annotations\[3\] \(id 4\) has no 'bbox'"),
    (lambda d: d["images"][0].pop("coco_url") and d,
     r"images\[0\] \(id 1\) has no 'coco_url'.*register_coco_instances"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]) or d,
     r"annotations\[0\] \(id 1\) has bbox \[1, 2, 3\]; a box is \[x, y, width, height\]"),
])
def test_json_not_lvis_shaped_names_entry_and_field(tiny_json, edit, message, load):
    data, image_root = tiny_json
    with pytest.raises(DatasetFormatError, match=message):
        load(edit(data), image_root)


def test_unknown_category_id_is_an_error(tiny_json, load):
    data, image_root = tiny_json
    data["annotations"][5]["category_id"] = 99
    image_id = data["annotations"][5]["image_id"]
    with pytest.raises(DatasetFormatError, match=(
        rf"1 annotation\(s\) have a category_id that is not among the {TINY_CLASSES} categories "
        rf"\(ids 1\.\.{TINY_CLASSES}\), e\.g\. annotation id 6 \(image id {image_id}\) has "
        r"category_id 99\. Fix those annotations")):
        load(data, image_root)


def test_degenerate_boxes_are_skipped_and_counted_or_an_error_when_many(tiny_json, caplog, load):
    data, image_root = tiny_json
    total = len(data["annotations"])
    data["annotations"][0]["bbox"][2] = 0.0  # zero width
    with caplog.at_level(logging.WARNING, logger="efl"):
        dicts, _ = load(data, image_root)
    assert sum(len(d["annotations"]) for d in dicts) == total - 1
    assert f"skipped 1 of {total} annotations whose box has width or height <= 0 (e.g. " \
           "annotation id 1" in caplog.text
    for ann in data["annotations"][:10]:  # > 10%: a broken file
        ann["bbox"][3] = -5.0
    with pytest.raises(DatasetFormatError, match=rf"10 of {total} boxes have width or height <= 0 "
                       r"\(more than 10%\), e\.g\. annotation id 1 .*check how the file's boxes"):
        load(data, image_root)
    data["annotations"][0]["bbox"][0] = float("nan")  # json writes NaN, and reads it back
    with pytest.raises(DatasetFormatError, match=r"1 box\(es\) hold NaN or infinity, e\.g\. "
                       r"annotation id 1 "):
        load(data, image_root)


def test_missing_image_file_is_an_error(tmp_path, tiny_dataset, tiny_json, load):
    data, _ = tiny_json
    root = tmp_path / "images"
    shutil.copytree(os.path.join(dataset_root(tiny_dataset), "train2017"), root / "train2017")
    missing = root / "train2017" / data["images"][7]["file_name"]
    missing.unlink()
    with pytest.raises(InputError, match=rf"1 of the 40 images listed in .* are missing, e\.g\. "
                       rf"{missing}\. Images are read from image_root"):
        load(data, str(root))


@pytest.mark.slow
def test_unreadable_image_stops_training_without_outputs(tiny_dataset, tmp_path, register):
    src = dataset_root(tiny_dataset)
    root = tmp_path / "data"
    shutil.copytree(src, root)
    for png in (root / "train2017").iterdir():
        png.write_bytes(b"not a png")  # every training image unreadable
    for split in ("train", "val"):
        name = register(f"bad_images_{split}", root / f"lvis_synthetic_{split}.json", root)
    out = tmp_path / "out"
    cfg = tiny_lazy_config("efl", name[: -len("_val")], str(out))
    cfg.dataloader.train.num_workers = 1  # the error crosses the worker process
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(ImageUnreadable, match=rf"Cannot read training image {root}/train2017/\d+\.png "
                       r"\(image_id \d+\): UnidentifiedImageError.*Restore it"):
        trainer.train()
    assert not {"model_final.pth", "results.json", "last_checkpoint"} & set(os.listdir(out))


def test_efl_hyperparameter_out_of_range_names_the_config_key(tiny_dataset, monkeypatch):
    monkeypatch.setenv("EFL_TINY_DATASET", dataset_root(tiny_dataset))
    with pytest.raises(ConfigError, match=r"Config key model\.cls_loss\.scale_factor=-1 is out of range: "
                       r"scale_factor must be >= 0.*e\.g\. model\.cls_loss\.scale_factor=8\.0"):
        load_config(CONFIG, ["model.cls_loss.scale_factor=-1"])
    cfg = tiny_lazy_config("efl", tiny_dataset, "/unused")
    cfg.model.cls_loss.alpha = 1.5
    with pytest.raises(ConfigError, match=r"model\.cls_loss\.alpha=1\.5 is out of range"):
        Trainer.build_model(cfg)
    cfg.model.cls_loss.alpha = 0.25
    check_efl_hyperparameters(cfg)


def test_unknown_override_key_is_an_error_with_the_close_match(tiny_dataset, monkeypatch):
    monkeypatch.setenv("EFL_TINY_DATASET", dataset_root(tiny_dataset))
    with pytest.raises(ConfigError, match=r"Unknown config key 'train\.max_iterr' in the override "
                       r"'train\.max_iterr=5': train has no key 'max_iterr'\. Did you mean "
                       r"'train\.max_iter'\?"):
        load_config(CONFIG, ["train.max_iterr=5"])
    with pytest.raises(ConfigError, match=r"Did you mean 'model\.cls_loss\.scale_factor'"):
        load_config(CONFIG, ["model.cls_loss.scale_factr=4"])
    # Arguments a LazyCall's target accepts, left at their default by the config: accepted.
    cfg = load_config(CONFIG, ["model.cls_loss.implementation=reference", "train.max_iter=3"])
    assert cfg.model.cls_loss.implementation == "reference" and cfg.train.max_iter == 3


@pytest.mark.slow
def test_train_net_prints_config_errors_once_without_stack_trace(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    code, output = train_net(str(out), "train.max_iterr=5", dataset_root=dataset_root(tiny_dataset))
    assert code == 2, output[-3000:]
    assert output.count("Did you mean 'train.max_iter'?") == 1
    assert "Traceback" not in output
    assert not out.exists()


@pytest.mark.slow
def test_nan_loss_stops_at_its_iteration_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    code, output = train_net(
        str(out), "model._target_=faults.LossBecomesNaN", "model.nan_at_iter=3",
        "dataloader.train.num_workers=0", dataset_root=dataset_root(tiny_dataset),
    )
    assert code == 2, output[-3000:]
    assert "Traceback" not in output
    assert "Training stopped at iteration 3: the loss became NaN or infinite" in output
    assert f"Nothing was saved after the last good checkpoint, {out}/model_0000001.pth" in output
    assert last_checkpoint(out) == "model_0000001.pth"
    files = set(os.listdir(out))
    assert "model_0000001.pth" in files
    assert not {"model_0000003.pth", "model_final.pth", "results.json"} & files


@pytest.mark.slow
def test_nan_loss_in_the_last_iteration_is_not_evaluated(tiny_dataset, tmp_path):
    """Detectron2's EvalHook would evaluate the failed run and write results.json."""
    from faults import LossBecomesNaN

    from efl.errors import TrainingDiverged

    cfg = tiny_lazy_config("efl", tiny_dataset, str(tmp_path), max_iter=2)
    cfg.model._target_ = LossBecomesNaN
    cfg.model.nan_at_iter = 1
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(TrainingDiverged, match="Training stopped at iteration 1: the loss became "
                       r"NaN or infinite \(losses: .*\)\. Nothing was saved after the last good "
                       r"checkpoint \(none was written yet\)"):
        trainer.train()
    assert not {"model_final.pth", "results.json", "inference"} & set(os.listdir(tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_config_on_a_machine_without_cuda_names_train_device_cpu(tmp_path):
    out = tmp_path / "out"
    code, output = train_net(
        str(out), "train.init_checkpoint=model_final.pth", flags=["--eval-only"],
        config=os.path.join(ROOT, "configs", "LVISv1", "retinanet_R_50_FPN_2x_efl.py"),
        dataset_root=str(tmp_path),
    )
    assert code == 2, output[-3000:]
    assert "Traceback" not in output
    assert "train.device='cuda'" in output and "train.device=cpu" in output
    assert not out.exists()  # stopped before anything was built or written
