"""Every LazyConfig instantiates, keeps Detectron2's layout, and focal/EFL twins differ
only in the model's loss."""

import glob
import os

import pytest
from detectron2.config import LazyConfig, instantiate
from omegaconf import OmegaConf

from efl import compat
from efl.engine import prepare_run_datasets
from helpers import ROOT

LVIS = sorted(glob.glob(os.path.join(ROOT, "configs/LVISv1/*.py")))
SYNTHETIC = sorted(glob.glob(os.path.join(ROOT, "configs/Synthetic/*.py")))
TWINS = [
    ("LVISv1/retinanet_R_50_FPN_2x_focal.py", "LVISv1/retinanet_R_50_FPN_2x_efl.py"),
    ("LVISv1/fcos_R_50_FPN_2x_focal.py", "LVISv1/fcos_R_50_FPN_2x_efl.py"),
    ("Synthetic/retinanet_focal.py", "Synthetic/retinanet_efl.py"),
    ("LVISv1/focal_improved_R_50_FPN_24ep.py", "LVISv1/efl_improved_R_50_FPN_24ep.py"),
    ("LVISv1/focal_improved_R_101_FPN_24ep.py", "LVISv1/efl_improved_R_101_FPN_24ep.py"),
    ("Synthetic/improved_focal.py", "Synthetic/improved_efl.py"),
    ("Synthetic/quality_qfl.py", "Synthetic/quality_eqfl.py"),
    ("LVISv1/qfl_improved_R_50_FPN_24ep.py", "LVISv1/eqfl_improved_R_50_FPN_24ep.py"),
    ("Synthetic/retinanet_focal_families.py", "Synthetic/retinanet_efl_families.py"),
    # the long-tail baselines (docs/baselines.md)
    ("LVISv1/retinanet_R_50_FPN_2x_focal.py", "LVISv1/retinanet_R_50_FPN_2x_eql.py"),
    ("LVISv1/retinanet_R_50_FPN_2x_focal.py", "LVISv1/retinanet_R_50_FPN_2x_eqlv2.py"),
    ("LVISv1/focal_improved_R_50_FPN_24ep.py", "LVISv1/eql_improved_R_50_FPN_24ep.py"),
    ("LVISv1/focal_improved_R_50_FPN_24ep.py", "LVISv1/eqlv2_improved_R_50_FPN_24ep.py"),
    ("Synthetic/retinanet_focal.py", "Synthetic/retinanet_eql.py"),
    ("Synthetic/retinanet_focal.py", "Synthetic/retinanet_eqlv2.py"),
    ("Synthetic/improved_focal.py", "Synthetic/improved_eql.py"),
    ("Synthetic/improved_focal.py", "Synthetic/improved_eqlv2.py"),
    ("Synthetic/yolox_ip_focal.py", "Synthetic/yolox_ip_efl.py"),
    ("LVISv1/focal_yolox_ip_s_300e.py", "LVISv1/efl_yolox_ip_s_300e.py"),
]
# The baseline in the cls_loss slot of each EFL model (a stock RetinaNet / FCOS has none).
BASELINE_LOSS = {"EqualizedFocalLoss": "SigmoidFocalLoss",
                 "EqualizedQualityFocalLoss": "QualityFocalLoss",
                 "EqualizationLoss": "SigmoidFocalLoss", "EqualizationLossV2": "SigmoidFocalLoss"}


def load(path):
    return LazyConfig.load(path if os.path.isabs(path) else os.path.join(ROOT, "configs", path))


def test_expected_configs_exist():
    names = {os.path.basename(p) for p in LVIS}
    assert {
        "retinanet_R_50_FPN_2x_focal.py", "retinanet_R_50_FPN_2x_efl.py",
        "retinanet_R_101_FPN_2x_efl.py", "fcos_R_50_FPN_2x_focal.py", "fcos_R_50_FPN_2x_efl.py",
        "efl_improved_R_50_FPN_24ep.py", "efl_improved_R_101_FPN_24ep.py",
        "focal_improved_R_50_FPN_24ep.py",
    } <= names
    assert {"retinanet_focal.py", "retinanet_efl.py", "improved_focal.py", "improved_efl.py",
            "retinanet_focal_stats.py"} <= {
        os.path.basename(p) for p in SYNTHETIC
    }


@pytest.mark.parametrize("path", LVIS + SYNTHETIC, ids=os.path.basename)
def test_config_layout_and_model_instantiates(path):
    cfg = load(path)
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        assert key in cfg, key
    for key in ("max_iter", "output_dir", "eval_period", "init_checkpoint", "device", "seed"):
        assert key in cfg.train, key
    assert "period" in cfg.train.checkpointer
    assert {"train", "test", "evaluator"} <= set(cfg.dataloader)
    if "Synthetic" in path:  # generated once, as a run would (the model reads its groups)
        prepare_run_datasets(cfg)
    name = os.path.basename(path)
    if compat.LEGACY_D2 and "LVISv1" in path and (name.startswith("eql_") or name.endswith("_eql.py")):
        pytest.skip("Detectron2 v0.6 has no LVIS v1 class_image_count (efl.compat item 6): EQL "
                    "reads lvis_v1_train.json there, which these machines do not have")
    model = instantiate(cfg.model)
    assert model.max_detections_per_image == 300
    assert model.test_score_thresh <= 1e-3
    if cfg.train.get("epochs"):  # resolved by the run plan from the loader; any values here
        cfg.lr_multiplier.epoch_starts = [100 * e for e in range(cfg.train.epochs + 1)]
    instantiate(cfg.lr_multiplier)
    if "cls_loss" in cfg.model:
        assert model.cls_loss.num_classes == model.num_classes
    if "LVISv1" in path:
        assert model.num_classes == 1203
        assert cfg.dataloader.train.repeat_thresh == 0.001
        assert cfg.dataloader.train.dataset.names == "lvis_v1_train"
        assert cfg.dataloader.evaluator.max_dets_per_image == 300
        if "yolox" in path:  # their recipe: no pretraining
            assert cfg.train.init_checkpoint == ""
        else:
            assert cfg.train.init_checkpoint.startswith(
                "https://download.pytorch.org/models/resnet" if "improved" in path
                else "detectron2://ImageNetPretrained/MSRA/R-"
            )
        if "class_groups" in cfg.model.get("cls_loss", {}):
            assert model.cls_loss.group_names == ("r", "c", "f")


@pytest.mark.parametrize("focal, efl", TWINS)
def test_focal_and_efl_twins_differ_only_in_the_loss(focal, efl):
    a, b = load(focal), load(efl)
    for key in ("dataloader", "optimizer", "lr_multiplier"):
        assert OmegaConf.to_yaml(a[key]) == OmegaConf.to_yaml(b[key]), key
    train_a, train_b = dict(a.train), dict(b.train)
    assert train_a.pop("output_dir") != train_b.pop("output_dir")
    assert train_a == train_b
    model_a, model_b = dict(a.model), dict(b.model)
    loss_b = model_b.pop("cls_loss")._target_.__name__
    assert loss_b in BASELINE_LOSS
    target_a, target_b = model_a.pop("_target_").__name__, model_b.pop("_target_").__name__
    if target_a in ("RetinaNet", "FCOS"):  # the stock model: its loss is Detectron2's own
        assert "cls_loss" not in model_a and target_b == "EFL" + target_a
    else:  # the same class, the baseline module in the same slot
        assert model_a.pop("cls_loss")._target_.__name__ == BASELINE_LOSS[loss_b]
        assert target_a == target_b
    assert OmegaConf.to_yaml(OmegaConf.create(model_a)) == OmegaConf.to_yaml(OmegaConf.create(model_b))


def test_focal_statistics_twin_differs_from_efl_in_the_loss_alone():
    """retinanet_focal_stats.py: retinanet_efl.py with SigmoidFocalLoss(record_statistics=
    True) in the cls_loss slot (same classes, same class_groups), nothing else."""
    efl, focal = load("Synthetic/retinanet_efl.py"), load("Synthetic/retinanet_focal_stats.py")
    for key in ("dataloader", "optimizer", "lr_multiplier"):
        assert OmegaConf.to_yaml(efl[key]) == OmegaConf.to_yaml(focal[key]), key
    train_a, train_b = dict(efl.train), dict(focal.train)
    assert train_a.pop("output_dir") != train_b.pop("output_dir") and train_a == train_b
    # focal loss's alpha and gamma are EFL's alpha and gamma_b (the model's focal settings)
    assert (focal.model.cls_loss.alpha, focal.model.cls_loss.gamma) == (
        efl.model.cls_loss.alpha, efl.model.cls_loss.gamma_b) == (0.25, 2.0)
    loss_a, loss_b = efl.model.pop("cls_loss"), focal.model.pop("cls_loss")
    assert OmegaConf.to_yaml(efl.model) == OmegaConf.to_yaml(focal.model)
    assert focal.model._target_.__name__ == "EFLRetinaNet"
    assert loss_b._target_.__name__ == "SigmoidFocalLoss" and loss_b.record_statistics is True
    assert OmegaConf.to_yaml(loss_a.class_groups) == OmegaConf.to_yaml(loss_b.class_groups)
    assert loss_a.num_classes == loss_b.num_classes


def test_yolox_ip_recipe_configs_differ_only_where_their_files_do():
    """EQFL vs EFL: the model class and the loss; M vs S: depth, width (and the head's input
    channels that follow) alone, the data recipe shared; every file: their 300 epochs of
    777 iterations (16 x 8), the last 15 without mosaic / affine / mixup, EMA 0.9998 / 2000."""
    efl_s, eqfl_s = load("LVISv1/efl_yolox_ip_s_300e.py"), load("LVISv1/eqfl_yolox_ip_s_300e.py")
    efl_m, eqfl_m = load("LVISv1/efl_yolox_ip_m_300e.py"), load("LVISv1/eqfl_yolox_ip_m_300e.py")
    for a, b in ((efl_s, eqfl_s), (efl_m, eqfl_m)):
        for key in ("dataloader", "optimizer", "lr_multiplier"):
            assert OmegaConf.to_yaml(a[key]) == OmegaConf.to_yaml(b[key]), key
        ma, mb = dict(a.model), dict(b.model)
        assert ma.pop("_target_").__name__ == "YOLOXIP" and mb.pop("_target_").__name__ == "QualityYOLOXIP"
        assert ma.pop("cls_loss").scale_factor == mb.pop("cls_loss").scale_factor == 4.0
        assert OmegaConf.to_yaml(OmegaConf.create(ma)) == OmegaConf.to_yaml(OmegaConf.create(mb))
    for s, m in ((efl_s, efl_m), (eqfl_s, eqfl_m)):
        for key in ("optimizer", "lr_multiplier"):
            assert OmegaConf.to_yaml(s[key]) == OmegaConf.to_yaml(m[key]), key
        assert OmegaConf.to_yaml(s.dataloader.test) == OmegaConf.to_yaml(m.dataloader.test)
        assert s.dataloader.train.mapper.size == "s" and m.dataloader.train.mapper.size == "m"
        s.dataloader.train.mapper.size = "m"
        assert OmegaConf.to_yaml(s.dataloader.train) == OmegaConf.to_yaml(m.dataloader.train)
        assert (s.model.backbone.depth, m.model.backbone.depth) == (0.33, 0.67)
        assert (s.model.head.width, m.model.head.width) == (0.5, 0.75)
        for key in ("backbone", "head"):
            s.model.pop(key), m.model.pop(key)
        assert OmegaConf.to_yaml(s.model) == OmegaConf.to_yaml(m.model)
    for cfg in (efl_s, eqfl_s, efl_m, eqfl_m, load("LVISv1/focal_yolox_ip_s_300e.py")):
        assert cfg.train.max_iter == 300 * 777 == cfg.lr_multiplier.epoch_starts[-1]
        assert cfg.dataloader.train.mapper.no_aug_from_iter == 285 * 777
        assert cfg.dataloader.train.total_batch_size == 128 and cfg.optimizer.lr == pytest.approx(0.04)
        assert cfg.optimizer.nesterov and cfg.optimizer.momentum == 0.9
        assert (cfg.lr_multiplier.warmup_epochs, cfg.lr_multiplier.flat_epochs) == (5, 15)
        assert dict(cfg.train.ema) == {"enabled": True, "decay": 0.9998, "tau": 2000}
        assert cfg.dataloader.train.repeat_rounding == "ceil"


# The authors' recipe ("The authors' detector and recipe"), row by row.
IMPROVED = ["LVISv1/efl_improved_R_50_FPN_24ep.py", "LVISv1/efl_improved_R_101_FPN_24ep.py",
            "LVISv1/focal_improved_R_50_FPN_24ep.py", "LVISv1/focal_improved_R_101_FPN_24ep.py"]


@pytest.mark.parametrize("path", IMPROVED, ids=os.path.basename)
def test_improved_recipe_matches_the_authors_table(path):
    from efl.modeling import (
        ATSSAssigner, ATSSHead, ATSSRetinaNet, FrozenStatsBatchNorm2d, LastLevelP6P7, LateralTopFPN,
    )

    cfg = load(path)
    m = cfg.model
    # input: RGB, ImageNet mean/std (x 255), padded to 64
    assert m.input_format == "RGB" and cfg.dataloader.train.mapper.image_format == "RGB"
    assert m.pixel_mean == [123.675, 116.28, 103.53] and m.pixel_std == [58.395, 57.12, 57.375]
    assert m.backbone.size_divisibility == 64
    # backbone: ResNet-50/101 pytorch style, torchvision weights, BN stats fixed (affine
    # trained), stem and res2 frozen
    depth = 101 if "R_101" in path else 50
    stages = m.backbone.bottom_up.stages
    assert stages.depth == depth and stages.stride_in_1x1 is False
    assert stages.norm is FrozenStatsBatchNorm2d and m.backbone.bottom_up.freeze_at == 2
    assert m.backbone.bottom_up.stem.norm is FrozenStatsBatchNorm2d
    assert cfg.train.init_checkpoint == {
        50: "https://download.pytorch.org/models/resnet50-19c8e357.pth",
        101: "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth",
    }[depth]
    # neck: FPN P3-P7, 256 channels, P6 from the C5 lateral, no ReLU before P7
    assert m.backbone._target_ is LateralTopFPN
    assert m.backbone.in_features == ["res3", "res4", "res5"] and m.backbone.out_channels == 256
    top = m.backbone.top_block
    assert top._target_ is LastLevelP6P7 and top.in_channels == 256
    assert top.relu_before_p7 is False
    assert m.head_in_features == ["p3", "p4", "p5", "p6", "p7"]
    # head: 4 x (conv, GN 32, ReLU), IoU branch, prior 0.001
    assert m.head._target_ is ATSSHead and m.head.conv_dims == [256] * 4
    assert m.head.norm == "GN" and m.head.prior_prob == 0.001
    # anchors: 2 per location, aspect 1.0, scales 6 and 8 x stride
    strides = [8, 16, 32, 64, 128]
    assert m.anchor_generator.strides == strides and m.anchor_generator.aspect_ratios == [1.0]
    assert m.anchor_generator.sizes == [[6 * s, 8 * s] for s in strides] and m.head.num_anchors == 2
    # assignment: ATSS top 18 per level
    assert m._target_ is ATSSRetinaNet
    assert m.anchor_matcher._target_ is ATSSAssigner and m.anchor_matcher.topk == 18
    # loss: EFL (gamma_b 2, s 8, alpha 0.25) or focal (gamma 2, alpha 0.25)
    if "efl_" in os.path.basename(path):
        assert (m.cls_loss.gamma_b, m.cls_loss.scale_factor, m.cls_loss.alpha) == (2.0, 8.0, 0.25)
    else:
        assert m.cls_loss._target_.__name__ == "SigmoidFocalLoss"
        assert (m.focal_loss_gamma, m.focal_loss_alpha) == (2.0, 0.25)
        assert (m.cls_loss.gamma, m.cls_loss.alpha) == (2.0, 0.25)  # from the model's keys
    # test: no score threshold, top 6000 per level, NMS 0.5, 300 detections, 800 x 1333
    assert (m.test_score_thresh, m.test_topk_candidates, m.test_nms_thresh) == (0.0, 6000, 0.5)
    assert m.max_detections_per_image == 300
    test_resize = cfg.dataloader.test.mapper.augmentations[0]
    assert (test_resize.short_edge_length, test_resize.max_size) == (800, 1333)
    # data: 640..800 step 32, max 1333, flip; RFS t = 0.001, ceil rounding
    resize, flip = cfg.dataloader.train.mapper.augmentations
    assert list(resize.short_edge_length) == list(range(640, 801, 32)) and resize.max_size == 1333
    assert resize.sample_style == "choice" and flip.horizontal is True
    assert cfg.dataloader.train.repeat_thresh == 0.001
    assert cfg.dataloader.train.repeat_rounding == "ceil"
    # optimisation: SGD 0.9 / 1e-4, LR 0.02 at batch 16, clip L2 35, 24 epochs, x0.1 at 16, 22
    assert cfg.optimizer._target_.__name__ == "SGD"
    assert (cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.9, 1e-4)
    assert cfg.optimizer.params.weight_decay_norm is None  # norms decay too
    assert cfg.optimizer.lr == 0.02 and cfg.dataloader.train.total_batch_size == 16
    assert dict(cfg.train.clip_grad) == {"enabled": True, "max_norm": 35.0, "norm_type": 2.0}
    assert cfg.train.epochs == 24 and cfg.train.max_iter is None
    lr = cfg.lr_multiplier
    assert list(lr.milestones) == [16, 22] and lr.warmup_epochs == 1 and lr.warmup_factor == 0.001
    # The schedule, with 1000 iterations per epoch: warm-up over epoch 0, then 1, 0.1, 0.01.
    cfg.lr_multiplier.epoch_starts = [1000 * e for e in range(25)]
    sched = instantiate(cfg.lr_multiplier)
    at = lambda it: sched(it / 24000)  # noqa: E731
    assert abs(at(0) - 0.001) < 1e-9 and 0.4 < at(500) < 0.6
    assert at(1000) == at(15999) == 1.0
    assert abs(at(16000) - 0.1) < 1e-12 and abs(at(21999) - 0.1) < 1e-12
    assert abs(at(22000) - 0.01) < 1e-12 and abs(at(23999) - 0.01) < 1e-12
