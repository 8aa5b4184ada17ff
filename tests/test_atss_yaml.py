"""The YAML route to the authors' improved detector (efl.add_atss_config,
build_atss_resnet_fpn_backbone): the YAML lines of docs/authors-detector.md build the model
of configs/common/models/atss.py (same names, shapes, frozen parts, outputs on the same
weights), and torchvision's weights reach it through Detectron2's own checkpointer after
tools/convert_torchvision_resnet.py."""

import os
import pickle
import subprocess
import sys

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, LazyCall as L, get_cfg, instantiate
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.backbone import FPN
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from efl import EqualizedFocalLoss, add_atss_config
from efl.checkpoint import EFLCheckpointer
from efl.modeling import FrozenStatsBatchNorm2d, LateralTopFPN
from helpers import ROOT
from test_convert import torchvision_file

K = 6

# The MODEL / INPUT lines a YAML config needs for the authors' detector (as
# configs/common/models/atss.py); docs/authors-detector.md lists the same.
AUTHORS_YAML = """
MODEL:
  META_ARCHITECTURE: "ATSSRetinaNet"
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  BACKBONE:
    NAME: "build_atss_resnet_fpn_backbone"
    FREEZE_AT: 2
  RESNETS:
    DEPTH: 50
    NORM: "FrozenStatsBN"
    STRIDE_IN_1X1: False
    OUT_FEATURES: ["res3", "res4", "res5"]
  FPN:
    IN_FEATURES: ["res3", "res4", "res5"]
    OUT_CHANNELS: 256
  ANCHOR_GENERATOR:
    SIZES: [[48, 64], [96, 128], [192, 256], [384, 512], [768, 1024]]
    ASPECT_RATIOS: [[1.0]]
    OFFSET: 0.5
  RETINANET:
    NUM_CLASSES: 1203
    IN_FEATURES: ["p3", "p4", "p5", "p6", "p7"]
    NUM_CONVS: 4
    PRIOR_PROB: 0.001
    BBOX_REG_WEIGHTS: (1.0, 1.0, 1.0, 1.0)
    FOCAL_LOSS_ALPHA: 0.25
    FOCAL_LOSS_GAMMA: 2.0
    SCORE_THRESH_TEST: 0.0
    TOPK_CANDIDATES_TEST: 6000
    NMS_THRESH_TEST: 0.5
  ATSS:
    TOPK: 18
    CLASSIFICATION_LOSS: "EFL"
    HEAD_NORM: "GN"
    EFL_STATISTICS: "paper"
    P6_SOURCE: "lateral"
    RELU_BEFORE_P7: False
    SIZE_DIVISIBILITY: 64
INPUT:
  FORMAT: "RGB"
TEST:
  DETECTIONS_PER_IMAGE: 300
VERSION: 2
"""


def yaml_cfg(tmp_path, *opts):
    path = tmp_path / "authors.yaml"
    path.write_text(AUTHORS_YAML)
    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
                         "MODEL.RETINANET.NUM_CLASSES", str(K), *opts])
    return cfg


def lazy_model(efl_statistics="paper"):
    cfg = LazyConfig.load(os.path.join(ROOT, "configs/common/models/atss.py"))
    cfg.model.num_classes = K
    cfg.model.cls_loss = L(EqualizedFocalLoss)(num_classes=K)
    cfg.model.efl_statistics = efl_statistics
    return instantiate(cfg.model)


def perturb(model, seed=0):
    """Every norm's statistics and affine and every bias moved off their initial values."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (FrozenBatchNorm2d, torch.nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
            if isinstance(m, FrozenBatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.normal_(0, 0.1)


def _instances(size, rows, classes):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(rows, dtype=torch.float32))
    inst.gt_classes = torch.tensor(classes)
    return inst


def test_yaml_lines_build_the_lazyconfig_model(tmp_path):
    torch.manual_seed(0)
    ours = lazy_model()
    yaml_model = build_model(yaml_cfg(tmp_path))
    a, b = ours.state_dict(), yaml_model.state_dict()
    assert list(a) == list(b)
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert ({n: p.requires_grad for n, p in ours.named_parameters()}
            == {n: p.requires_grad for n, p in yaml_model.named_parameters()})
    for m in (ours, yaml_model):
        bn = m.backbone.bottom_up.res3[0].conv1.norm
        assert type(bn) is FrozenStatsBatchNorm2d and bn.weight.requires_grad
        assert not m.backbone.bottom_up.stem.conv1.norm.weight.requires_grad  # freeze_at=2
        assert type(m.backbone) is LateralTopFPN and m.backbone.size_divisibility == 64
        assert m.backbone.top_block.p6.in_channels == 256
        assert m.input_format == "RGB" and m.efl_statistics == "paper"
        assert m.backbone.bottom_up.res3[0].conv1.stride == (1, 1)  # stride on the 3x3
    torch.testing.assert_close(ours.pixel_mean, yaml_model.pixel_mean)
    torch.testing.assert_close(ours.pixel_std, yaml_model.pixel_std)
    for name in ("test_score_thresh", "test_topk_candidates", "test_nms_thresh",
                 "max_detections_per_image", "focal_loss_alpha", "focal_loss_gamma"):
        assert getattr(ours, name) == getattr(yaml_model, name), name
    assert str(ours.anchor_matcher) == str(yaml_model.anchor_matcher)

    # The same (perturbed) weights give the same outputs; 100 x 150 is padded to 128 x 192.
    perturb(ours)
    yaml_model.load_state_dict(ours.state_dict(), strict=True)
    image = torch.rand(3, 100, 150) * 255
    inputs = [{"image": image}, {"image": image.flip(-1)}]
    ours.eval(), yaml_model.eval()
    with torch.no_grad():
        out_a, out_b = ours(inputs), yaml_model(inputs)
        pre = ours.preprocess_image(inputs)
        assert pre.tensor.shape[-2:] == (128, 192)
        for name, feature in ours.backbone(pre.tensor).items():
            torch.testing.assert_close(feature, yaml_model.backbone(pre.tensor)[name], rtol=0, atol=0)
    for x, y in zip(out_a, out_b):
        x, y = x["instances"], y["instances"]
        assert len(x) == len(y) > 0
        assert torch.equal(x.pred_classes, y.pred_classes)
        torch.testing.assert_close(x.pred_boxes.tensor, y.pred_boxes.tensor, rtol=0, atol=0)
        torch.testing.assert_close(x.scores, y.scores, rtol=0, atol=0)

    # ... and the same losses, EFL state and gradients in a training step.
    batch = [{"image": image, "instances": _instances((100, 150), [[10, 12, 60, 70]], [2])}]
    losses = {}
    for m in (ours, yaml_model):
        m.train()
        with EventStorage():
            losses[m] = m(batch)
            sum(losses[m].values()).backward()
    for key in losses[ours]:
        torch.testing.assert_close(losses[ours][key], losses[yaml_model][key], rtol=0, atol=0)
    torch.testing.assert_close(ours.cls_loss.pos_grad, yaml_model.cls_loss.pos_grad, rtol=0, atol=0)
    grad = "backbone.bottom_up.res3.0.conv1.norm.weight"
    torch.testing.assert_close(dict(ours.named_parameters())[grad].grad,
                               dict(yaml_model.named_parameters())[grad].grad, rtol=0, atol=0)


def test_yaml_keys_switch_to_the_previous_detector_and_check_their_values(tmp_path):
    r18 = ("MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64")
    model = build_model(yaml_cfg(
        tmp_path, *r18, "MODEL.ATSS.P6_SOURCE", "res5", "MODEL.ATSS.SIZE_DIVISIBILITY", "32",
        "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.ATSS.EFL_STATISTICS", "authors",
        "MODEL.ATSS.CLASSIFICATION_LOSS", "focal"))
    assert type(model.backbone) is FPN and model.backbone.size_divisibility == 32
    assert model.backbone.top_block.p6.in_channels == 512  # from res5
    assert type(model.backbone.bottom_up.res3[0].conv1.norm) is FrozenBatchNorm2d
    assert type(model.cls_loss).__name__ == "SigmoidFocalLoss" and model.efl_statistics == "authors"
    with pytest.raises(ValueError, match="MODEL.ATSS.P6_SOURCE"):
        build_model(yaml_cfg(tmp_path, "MODEL.ATSS.P6_SOURCE", "c5"))
    with pytest.raises(ValueError, match="efl_statistics"):
        build_model(yaml_cfg(tmp_path, *r18, "MODEL.ATSS.EFL_STATISTICS", "mine"))


def run_tool(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools/convert_torchvision_resnet.py"),
                           *args], capture_output=True, text=True, env=os.environ)


def test_torchvision_weights_reach_the_yaml_model_through_detectron2s_checkpointer(tmp_path):
    source = torchvision_file(tmp_path, "resnet50")
    net = torchvision.models.resnet50()
    net.load_state_dict(torch.load(source))
    done = run_tool("--input", source, "--output", str(tmp_path / "r50.pkl"))
    assert done.returncode == 0, done.stderr

    cfg = yaml_cfg(tmp_path)
    model = build_model(cfg)
    # Why the tool: Detectron2's checkpointer fills nothing from torchvision's own names.
    before = {k: v.clone() for k, v in model.backbone.bottom_up.state_dict().items()}
    DetectionCheckpointer(model).load(source)
    assert all(torch.equal(v, before[k]) for k, v in model.backbone.bottom_up.state_dict().items())
    DetectionCheckpointer(model).load(str(tmp_path / "r50.pkl"))  # Detectron2's own
    model.eval(), net.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = model.backbone.bottom_up(x)
        y = net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))
        for name, layer in (("res3", None), ("res4", net.layer3), ("res5", net.layer4)):
            y = layer(y) if layer is not None else y
            assert (out[name] - y).abs().max() < 1e-4, name
    other = build_model(cfg)  # the LazyConfig route's checkpointer reads the file too
    EFLCheckpointer(other).resume_or_load(str(tmp_path / "r50.pkl"), resume=False)
    for key, value in model.backbone.bottom_up.state_dict().items():
        assert torch.equal(other.backbone.bottom_up.state_dict()[key], value), key

    # Not a torchvision ResNet: one paragraph, exit 2, nothing written.
    with open(tmp_path / "r50.pkl", "rb") as f:
        renamed = {k: torch.from_numpy(v) for k, v in pickle.load(f)["model"].items()}
    torch.save(renamed, tmp_path / "d2.pth")
    done = run_tool("--input", str(tmp_path / "d2.pth"), "--output", str(tmp_path / "bad.pkl"))
    assert done.returncode == 2 and "not a torchvision ResNet" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "bad.pkl").exists()
