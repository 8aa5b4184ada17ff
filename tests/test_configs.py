"""Every LazyConfig instantiates, keeps Detectron2's layout, and focal/EFL twins differ
only in the model's loss."""

import glob
import os

import pytest
from detectron2.config import LazyConfig, instantiate
from omegaconf import OmegaConf

from conftest import ROOT

LVIS = sorted(glob.glob(os.path.join(ROOT, "configs/LVISv1/*.py")))
SYNTHETIC = sorted(glob.glob(os.path.join(ROOT, "configs/Synthetic/*.py")))
TWINS = [
    ("LVISv1/retinanet_R_50_FPN_2x_focal.py", "LVISv1/retinanet_R_50_FPN_2x_efl.py"),
    ("LVISv1/fcos_R_50_FPN_2x_focal.py", "LVISv1/fcos_R_50_FPN_2x_efl.py"),
    ("Synthetic/retinanet_focal.py", "Synthetic/retinanet_efl.py"),
]


def load(path):
    return LazyConfig.load(path if os.path.isabs(path) else os.path.join(ROOT, "configs", path))


def test_expected_configs_exist():
    names = {os.path.basename(p) for p in LVIS}
    assert {
        "retinanet_R_50_FPN_2x_focal.py", "retinanet_R_50_FPN_2x_efl.py",
        "retinanet_R_101_FPN_2x_efl.py", "fcos_R_50_FPN_2x_focal.py", "fcos_R_50_FPN_2x_efl.py",
    } <= names
    assert {"retinanet_focal.py", "retinanet_efl.py"} <= {os.path.basename(p) for p in SYNTHETIC}


@pytest.mark.parametrize("path", LVIS + SYNTHETIC, ids=os.path.basename)
def test_config_layout_and_model_instantiates(path):
    cfg = load(path)
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        assert key in cfg, key
    for key in ("max_iter", "output_dir", "eval_period", "init_checkpoint", "device", "seed"):
        assert key in cfg.train, key
    assert "period" in cfg.train.checkpointer
    assert {"train", "test", "evaluator"} <= set(cfg.dataloader)
    model = instantiate(cfg.model)
    assert model.max_detections_per_image == 300
    assert model.test_score_thresh <= 1e-3
    instantiate(cfg.lr_multiplier)
    if "efl" in cfg.model:
        assert model.efl.num_classes == model.num_classes
    if "LVISv1" in path:
        assert model.num_classes == 1203
        assert cfg.dataloader.train.repeat_thresh == 0.001
        assert cfg.dataloader.train.dataset.names == "lvis_v1_train"
        assert cfg.dataloader.evaluator.max_dets_per_image == 300
        assert cfg.train.init_checkpoint.startswith("detectron2://ImageNetPretrained/MSRA/R-")
        if "efl" in cfg.model:
            assert model.efl.group_names == ("r", "c", "f")


@pytest.mark.parametrize("focal, efl", TWINS)
def test_focal_and_efl_twins_differ_only_in_the_loss(focal, efl):
    a, b = load(focal), load(efl)
    for key in ("dataloader", "optimizer", "lr_multiplier"):
        assert OmegaConf.to_yaml(a[key]) == OmegaConf.to_yaml(b[key]), key
    train_a, train_b = dict(a.train), dict(b.train)
    assert train_a.pop("output_dir") != train_b.pop("output_dir")
    assert train_a == train_b
    model_a, model_b = dict(a.model), dict(b.model)
    assert "efl" in model_b and "efl" not in model_a
    assert model_b.pop("_target_").__name__ == "EFL" + model_a.pop("_target_").__name__
    model_b.pop("efl")
    assert OmegaConf.to_yaml(OmegaConf.create(model_a)) == OmegaConf.to_yaml(OmegaConf.create(model_b))
