"""YOLOX-IP (efl.modeling.yolox): the network's figures (channels, depths, strides, BN eps /
momentum, prior biases), the detector's seams (L1 on the raw deltas, clipping at offset 0),
anchors, the YAML route building the LazyConfig's modules, EFL in place of focal loss."""

import math
import os
import sys

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from efl import EqualizedFocalLoss, YOLOXIP, add_yolox_config
from efl.modeling.yolox import CSPDarknet, YOLOXPAFPN
from helpers import ROOT

K = 6
sys.path.insert(0, ROOT)
from configs.common.models.yolox_ip import set_yolox_size  # noqa: E402


def lazy(size="s", efl=False):
    cfg = LazyConfig.load(os.path.join(ROOT, "configs/common/models/yolox_ip.py"))
    cfg.model.num_classes = K
    set_yolox_size(cfg.model, size)
    if efl:
        from configs.common.efl import use_efl

        use_efl(cfg.model, train_dataset="none", scale_factor=4.0)
        cfg.model.cls_loss.class_groups = None
    return cfg.model


def _count(module, cls):
    return sum(isinstance(m, cls) for m in module.modules())


@pytest.mark.parametrize("size, c, d", [("s", 32, 1), ("m", 48, 2)])
def test_backbone_and_neck_figures(size, c, d):
    from efl.modeling.yolox import Bottleneck

    model = instantiate(lazy(size))
    bottom_up = model.backbone.bottom_up
    assert isinstance(bottom_up, CSPDarknet) and isinstance(model.backbone, YOLOXPAFPN)
    # CSP depths d, 3d, 3d, d in the backbone; round(3 x depth) = d in each of 4 neck CSPs.
    depths = [len(getattr(bottom_up, s)[-1].blocks) for s in ("dark2", "dark3", "dark4", "dark5")]
    assert depths == [d, 3 * d, 3 * d, d]
    assert not any(b.shortcut for b in bottom_up.dark5[-1].blocks)
    assert _count(model.backbone, Bottleneck) == 8 * d + 4 * d
    x = torch.rand(1, 3, 96, 128) * 255
    with torch.no_grad():
        out = model.backbone(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p3": (1, 4 * c, 12, 16), "p4": (1, 8 * c, 6, 8), "p5": (1, 16 * c, 3, 4)}
    shapes = model.backbone.output_shape()
    assert [shapes[f].stride for f in ("p3", "p4", "p5")] == [8, 16, 32]
    assert model.backbone.size_divisibility == 32
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)
    assert _count(model, torch.nn.SiLU) == len(bns)  # every conv-BN is followed by SiLU


@pytest.mark.parametrize("size, width", [("s", 0.5), ("m", 0.75)])
def test_head_has_per_level_weights_and_prior_biases(size, width):
    model = instantiate(lazy(size))
    head = model.head
    assert len(head.stems) == len(head.cls_score) == 3
    assert head.cls_score[0].weight.data_ptr() != head.cls_score[1].weight.data_ptr()
    assert all(conv.out_channels == int(256 * width) for conv in
               (head.stems[i].conv for i in range(3)))
    prior = math.log(0.001 / 0.999)
    for i in range(3):
        assert head.cls_score[i].out_channels == 2 * K and head.bbox_pred[i].out_channels == 8
        torch.testing.assert_close(head.cls_score[i].bias, torch.full((2 * K,), prior))
        torch.testing.assert_close(head.iou_pred[i].bias, torch.full((2,), prior))


def test_anchors_are_3_and_4_strides_at_offset_0():
    model = instantiate(lazy())
    feats = [torch.zeros(1, 1, 2, 2)] * 3
    anchors = model.anchor_generator(feats)
    for level, stride in enumerate((8, 16, 32)):
        a = anchors[level].tensor
        # location (0, 0): two squares centred at (0, 0), 3 and 4 strides wide
        torch.testing.assert_close(a[0], torch.tensor([-1.5, -1.5, 1.5, 1.5]) * stride)
        torch.testing.assert_close(a[1], torch.tensor([-2.0, -2.0, 2.0, 2.0]) * stride)
        torch.testing.assert_close(a[2] - a[0], torch.tensor([1.0, 0, 1, 0]) * stride)  # x + 1
    assert model.anchor_matcher.topk == 18
    assert (model.test_topk_candidates, model.test_nms_thresh, model.max_detections_per_image,
            model.test_score_thresh) == (1000, 0.65, 300, 0.0)
    assert model.input_format == "BGR" and model.pixel_std.flatten().tolist() == [1.0] * 3
    assert model.pixel_mean.flatten().tolist() == [0.0] * 3


def test_l1_on_raw_deltas_is_the_mean_over_positive_entries():
    model = instantiate(lazy())
    anchors = torch.tensor([[0.0, 0, 24, 24], [8, 8, 40, 40]])
    gt = torch.tensor([[2.0, 3, 20, 26], [10, 5, 30, 44]])
    deltas = torch.tensor([[0.1, -0.2, 0.3, 0.0], [0.5, 0.5, -0.5, 0.2]])
    target = model.box2box_transform.get_deltas(anchors, gt)
    out = model.delta_losses(deltas, anchors, gt)
    torch.testing.assert_close(out["loss_box_l1"], (deltas - target).abs().sum() / 8)
    empty = model.delta_losses(torch.zeros(0, 4, requires_grad=True), anchors[:0], gt[:0])
    assert empty["loss_box_l1"].item() == 0 and empty["loss_box_l1"].requires_grad


def test_boxes_are_clipped_to_the_image_at_offset_0():
    model = instantiate(lazy())
    boxes = torch.tensor([[-5.0, -5, 200, 150], [150, 120, 300, 300], [10, 10, 20, 20]])
    clipped = model.clip_boxes(boxes, (100, 160))
    assert clipped.tolist() == [[0, 0, 160, 100], [150, 100, 160, 100], [10, 10, 20, 20]]


def _instances(size, rows, classes):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(rows, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def test_training_and_inference_step_with_efl():
    torch.manual_seed(0)
    model = instantiate(lazy(efl=True))
    assert isinstance(model, YOLOXIP) and isinstance(model.cls_loss, EqualizedFocalLoss)
    image = torch.rand(3, 100, 130) * 255
    batch = [{"image": image, "instances": _instances((100, 130), [[10, 12, 60, 70]], [2])},
             {"image": image, "instances": _instances((100, 130), [], [])}]
    model.train()
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_iou", "loss_box_l1"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.cls_loss.pos_grad.sum() > 0
    model.eval()
    with torch.no_grad():
        out = model([{"image": image, "height": 100, "width": 130}])[0]["instances"]
    assert len(out) == 300 and torch.isfinite(out.pred_boxes.tensor).all()
    assert out.pred_boxes.tensor[:, 2].max() <= 130 and out.pred_boxes.tensor[:, 3].max() <= 100


def test_yaml_config_builds_the_lazyconfig_modules():
    cfg = get_cfg()
    add_yolox_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "YOLOXIP"
    cfg.MODEL.BACKBONE.NAME = "build_yolox_pafpn_backbone"
    cfg.MODEL.YOLOX.DEPTH, cfg.MODEL.YOLOX.WIDTH = 0.67, 0.75
    cfg.MODEL.RETINANET.NUM_CLASSES = K
    cfg.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5"]
    cfg.MODEL.RETINANET.PRIOR_PROB = 0.001
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[3 * s, 4 * s] for s in (8, 16, 32)]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[1.0]]
    cfg.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [0.0] * 3, [1.0] * 3
    cfg.MODEL.EFL.LOSS = "focal"
    cfg.MODEL.DEVICE = "cpu"
    yaml_model = build_model(cfg)
    ours = instantiate(lazy("m"))
    assert type(yaml_model) is YOLOXIP
    a, b = ours.state_dict(), yaml_model.state_dict()
    assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}
    torch.testing.assert_close(yaml_model.head.iou_pred[2].bias, ours.head.iou_pred[2].bias)


# ----- the CPU configs on the tiny dataset ------------------------------------------------
@pytest.mark.slow
def test_synthetic_config_trains_and_evaluates(tiny_dataset, tmp_path, loss="efl"):
    """configs/Synthetic/yolox_ip_efl.py (its focal twin differs in the loss alone:
    tests/test_configs.py), shrunk (width 0.125, 12 classes, 160 px, batch 2) on the tiny
    dataset: 4 iterations through the project's Trainer (the recipe's augmentations, mosaic
    / affine / mixup off from iteration 2), then LVIS evaluation."""
    from detectron2.config import LazyCall as L
    from fvcore.common.param_scheduler import MultiStepParamScheduler

    from efl.engine import Trainer
    from helpers import TINY_CLASSES

    cfg = LazyConfig.load(os.path.join(ROOT, f"configs/Synthetic/yolox_ip_{loss}.py"))
    set_yolox_size(cfg.model, depth=0.33, width=0.125)
    cfg.model.num_classes = TINY_CLASSES
    if loss == "efl":
        cfg.model.cls_loss.class_groups.dataset_name = f"{tiny_dataset}_train"
    cfg.dataloader.train.dataset.names = f"{tiny_dataset}_train"
    cfg.dataloader.test.dataset.names = f"{tiny_dataset}_val"
    cfg.dataloader.train.mapper.input_size = 160
    cfg.dataloader.train.mapper.no_aug_from_iter = 2  # the recipe's chain, then without mosaic
    cfg.dataloader.test.mapper.augmentations[0].max_size = 160
    cfg.dataloader.train.total_batch_size = 2
    cfg.dataloader.train.num_workers = cfg.dataloader.test.num_workers = 0
    cfg.train.update(epochs=None, max_iter=4, log_period=1, output_dir=str(tmp_path), seed=0)
    cfg.train.checkpointer.period = 4
    cfg.lr_multiplier = L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[3], num_updates=4)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    assert isinstance(trainer.model, YOLOXIP)
    assert "bbox" in results and math.isfinite(results["bbox"]["AP"])
    assert os.path.isfile(os.path.join(str(tmp_path), "model_final.pth"))
    if loss == "efl":
        assert trainer.model.cls_loss.pos_grad.sum() > 0


def test_eqfl_variant_keeps_the_iou_branch_and_trains_the_class_score_on_the_iou():
    from configs.common.models.yolox_ip import use_eqfl_quality
    from efl import EqualizedQualityFocalLoss
    from efl.modeling import QualityYOLOXIP

    cfg = lazy()
    use_eqfl_quality(cfg, train_dataset="none")
    cfg.cls_loss.class_groups = None
    model = instantiate(cfg)
    assert type(model) is QualityYOLOXIP and isinstance(model.cls_loss, EqualizedQualityFocalLoss)
    iou = torch.tensor([0.3, 0.9])
    assert model.classification_quality(iou) is iou
    batch = [{"image": torch.rand(3, 100, 130) * 255,
              "instances": _instances((100, 130), [[10, 12, 60, 70]], [2])}]
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_iou", "loss_box_l1"}
    sum(losses.values()).backward()
    assert sum(conv.weight.grad.abs().sum() for conv in model.head.iou_pred) > 0
    assert model.cls_loss.pos_grad.sum() > 0
    with pytest.raises(ValueError, match="needs quality targets but YOLOXIP"):
        cfg._target_ = YOLOXIP
        instantiate(cfg)
