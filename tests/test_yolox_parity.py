"""YOLOX-IP's network computes what the authors' does (United-Perception 52aaeb9, imported
from ../shared/vendor at run time): their CSPDarknet + YoloxPAFPN + YoloXHead, S and M, on
random weights with every BatchNorm's statistics and affine and every bias perturbed, their
state dict mapped onto ours by efl.convert.up_yolox (strictly: every tensor used, every one
of ours filled); the neck features and each level's cls / box / IoU outputs agree.

The max differences are printed (``pytest -s``) and recorded in the closing note of issue 26.
"""

import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

import up_reference as ref
from efl.convert.up_yolox import yolox_state_dict
from helpers import ROOT

K, A = 7, 2  # classes (their num_classes K + 1), anchors per location
SHAPE = (2, 3, 96, 128)  # a small batch, a multiple of 32
TOLERANCE = {"neck": 2e-4, "cls": 2e-4, "box": 2e-4, "iou": 2e-4}  # relative to max |x|


@pytest.fixture(scope="module")
def upx(tmp_path_factory):
    return ref.import_up_yolox(ref.unpack(str(tmp_path_factory.mktemp("united_perception"))))


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Every float tensor drawn: BN statistics (var in [0.5, 1.5]), BN weights in
    [0.8, 1.2], every bias and BN mean ~ 0.1 N(0, 1), conv weights ~ N(0, 1 / fan_in)
    (box predictors x 0.1: deltas of a trained regressor's size)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean") or name.endswith(".bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif t.dim() == 1:
                t.copy_(0.8 + 0.4 * torch.rand(t.shape, generator=g))
            else:
                scale = 0.1 if name.startswith("roi_head.reg_preds") else 1.0
                t.copy_(torch.randn(t.shape, generator=g) * scale * t[0].numel() ** -0.5)


def ours(size: str):
    import sys

    sys.path.insert(0, ROOT)
    from configs.common.models.yolox_ip import set_yolox_size

    cfg = LazyConfig.load(os.path.join(ROOT, "configs/common/models/yolox_ip.py"))
    cfg.model.num_classes = K
    set_yolox_size(cfg.model, size)
    return instantiate(cfg.model).eval()


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize("size", ["s", "m"])
def test_network_and_head_outputs_match_the_authors(upx, size):
    torch.manual_seed(0)
    theirs = ref.build_yolox(upx, size, K)
    perturb(theirs, seed={"s": 1, "m": 2}[size])
    model = ours(size)
    state, unknown = yolox_state_dict(theirs.state_dict(), num_anchors=A)
    assert unknown == []
    model.load_state_dict(state, strict=True)  # every tensor of ours filled, no extra

    images = torch.rand(SHAPE, generator=torch.Generator().manual_seed(3)) * 255  # BGR 0-255
    with torch.no_grad():
        their_feats, their_preds = ref.forward_yolox(theirs, images)
        feats = model.backbone(images)
        logits, deltas, ious = model.head([feats[f] for f in model.head_in_features])

    n = SHAPE[0]
    diffs = {"neck": 0.0, "cls": 0.0, "box": 0.0, "iou": 0.0}
    absolute = dict(diffs)
    for level, (theirs_f, (cls, loc, obj)) in enumerate(zip(their_feats, their_preds)):
        h, w = cls.shape[-2:]
        cls = cls.reshape(n, K, A, h, w).transpose(1, 2).reshape(n, A * K, h, w)  # anchor-major
        pairs = {"neck": (feats[f"p{level + 3}"], theirs_f), "cls": (logits[level], cls),
                 "box": (deltas[level], loc), "iou": (ious[level], obj)}
        for name, (a, b) in pairs.items():
            assert a.shape == b.shape, (name, level)
            assert torch.isfinite(b).all() and b.abs().max() > 0.1, (name, level)  # not degenerate
            diffs[name] = max(diffs[name], max_rel(a, b))
            absolute[name] = max(absolute[name], (a - b).abs().max().item())
    print(f"\nYOLOX-IP-{size.upper()} {tuple(SHAPE)}: max |ours - theirs| "
          + ", ".join(f"{k} {absolute[k]:.2e} (rel {diffs[k]:.1e})" for k in diffs))
    for name, tol in TOLERANCE.items():
        assert diffs[name] <= tol, (name, diffs[name])
