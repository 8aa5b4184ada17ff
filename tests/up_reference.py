"""The EFL authors' own detector code (United-Perception 52aaeb9), imported at test time from
the vendored archive (../shared/vendor), never copied here: their ResNet, FPN,
RetinaHeadWithIOU, anchors, EFL state and post-processing, their YOLOX-IP network and gradient
collector hook, built without the rest of their
framework (parent packages pre-registered as empty modules, their compiled NMS replaced by
torchvision's with their +1 pixel convention)."""

import contextlib
import importlib
import os
import sys
import tarfile
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from helpers import ROOT

# ../shared/vendor beside the checkout; EFL_VENDOR_DIR names another folder (a git worktree
# of the project lies deeper than the checkout the vendored folder sits beside).
VENDOR = os.environ.get("EFL_VENDOR_DIR", os.path.join(ROOT, "..", "shared", "vendor"))
ARCHIVE = os.path.join(VENDOR, "United-Perception-52aaeb9.tar.gz")
FOLDER = "United-Perception-52aaeb9"
STRIDES = [8, 16, 32, 64, 128]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # their config's `normalize`
_PACKAGES = [
    "up", "up.utils", "up.utils.model", "up.utils.general", "up.utils.env", "up.models",
    "up.models.backbones", "up.models.losses", "up.tasks", "up.tasks.det", "up.tasks.det.models",
    "up.tasks.det.models.necks", "up.tasks.det.models.heads", "up.tasks.det.models.heads.roi_head",
    "up.tasks.det.models.postprocess", "up.tasks.det.models.utils", "up.tasks.det.models.losses",
    "up.tasks.det.plugins", "up.tasks.det.plugins.efl", "up.tasks.det.plugins.efl.models",
    "up.tasks.det.plugins.efl.models.losses",
]


def unpack(cache_dir: str) -> str:
    """The archive unpacked into ``cache_dir`` (a pytest temporary folder); skips the test
    when the archive is absent."""
    if not os.path.isfile(ARCHIVE):
        pytest.skip(f"the authors' code is not vendored at {ARCHIVE}: parity tests need it")
    root = os.path.join(cache_dir, FOLDER)
    if not os.path.isdir(root):
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(cache_dir, filter="data")
    return root


def _nms(bboxes, cfg, descending=True):
    """Their ``up.extensions.nms`` (naive type) with torchvision's NMS in place of their
    compiled one, which measures IoU with ``ALIGNED_FLAG.offset`` (1) added to widths."""
    from up.utils.general.global_flag import ALIGNED_FLAG

    boxes = bboxes[:, :4].clone()
    boxes[:, 2:] += ALIGNED_FLAG.offset
    keep = torchvision.ops.nms(boxes, bboxes[:, 4], cfg["nms_iou_thresh"])
    return bboxes[keep], keep


def import_up(root: str) -> SimpleNamespace:
    """Their modules, imported once per process."""
    if "up.models.backbones.resnet" not in sys.modules:
        sys.path.insert(0, root)
        for name in _PACKAGES:
            module = types.ModuleType(name)
            module.__path__ = [os.path.join(root, *name.split("."))]
            sys.modules[name] = module
        extensions = types.ModuleType("up.extensions")  # their compiled ops: not built
        extensions.nms, extensions.gpu_iou_overlap = _nms, None
        sys.modules["up.extensions"] = extensions
        accuracy = types.ModuleType("up.utils.model.accuracy")  # needs sklearn; unused here
        sys.modules["up.utils.model.accuracy"] = accuracy
        sys.modules["up.utils.model"].accuracy = accuracy
        sys.modules["up.models.losses"].build_loss = None  # their loss registry: unused here
    get = importlib.import_module
    return SimpleNamespace(
        resnet=get("up.models.backbones.resnet"),
        fpn=get("up.tasks.det.models.necks.fpn"),
        head=get("up.tasks.det.models.heads.roi_head.retina_head"),
        efl=get("up.tasks.det.plugins.efl.models.losses.efl"),
        post=get("up.tasks.det.models.postprocess.retina_post_process"),
        predictor=get("up.tasks.det.models.postprocess.roi_predictor"),
        anchors=get("up.tasks.det.models.utils.anchor_generator"),
    )


_YOLOX_PACKAGES = [
    "up.tasks.det.plugins.yolov5", "up.tasks.det.plugins.yolov5.models",
    "up.tasks.det.plugins.yolox", "up.tasks.det.plugins.yolox.models",
    "up.tasks.det.plugins.yolox.models.backbone", "up.tasks.det.plugins.yolox.models.neck",
    "up.tasks.det.plugins.yolox.models.head",
]


def import_up_yolox(root: str) -> SimpleNamespace:
    """Their YOLOX-IP network modules (CSPDarknet, YoloxPAFPN, YoloXHead), imported once per
    process beside :func:`import_up`'s (more empty parent packages; ``base``: those)."""
    base = import_up(root)
    for name in _YOLOX_PACKAGES:
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [os.path.join(root, *name.split("."))]
            sys.modules[name] = module
    get = importlib.import_module
    return SimpleNamespace(
        backbone=get("up.tasks.det.plugins.yolox.models.backbone.cspdarknet"),
        neck=get("up.tasks.det.plugins.yolox.models.neck.pafpn"),
        head=get("up.tasks.det.plugins.yolox.models.head.yolox_head"),
        base=base,  # import_up's modules (post-processing, anchors)
    )


def build_yolox(upx, size: str, num_classes: int) -> nn.Module:
    """Their YOLOX-IP network as in efl_yolox_{small,medium}.yaml (``size`` "s" or "m"),
    ``num_classes`` foreground classes (+ background, their convention), every BatchNorm
    with eps 1e-3 and momentum 0.03 (their ``runtime.special_bn_init``); eval mode."""
    depth, width = {"s": (0.33, 0.5), "m": (0.67, 0.75)}[size]
    silu = {"type": "Silu"}
    det = nn.Module()
    det.backbone = getattr(upx.backbone, f"yolox_{size}")(
        out_layers=[2, 3, 4], out_strides=[8, 16, 32], normalize={"type": "solo_bn"}, act_fn=silu)
    det.neck = upx.neck.YoloxPAFPN(inplanes=det.backbone.get_outplanes(), depth=depth,
                                   out_strides=[8, 16, 32], act_fn=silu)
    det.roi_head = upx.head.YoloXHead(num_classes=num_classes + 1, width=width, init_prior=0.001,
                                      num_point=2, act_fn=silu, inplanes=det.neck.get_outplanes())
    for m in det.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps, m.momentum = 1e-3, 0.03
    return det.eval()


def forward_yolox(det: nn.Module, image: torch.Tensor):
    """Their neck features and raw head outputs on a (N, 3, H, W) batch:
    ([P3, P4, P5], [(cls (N, K*A, H, W) class-major, loc (N, A*4, H, W), obj (N, A, H, W))])."""
    feats = det.neck(det.backbone({"image": image}))["features"]
    return feats, det.roi_head({"features": feats})["preds"]


@contextlib.contextmanager
def aligned():
    """Their ``runtime.aligned: true`` (ALIGNED_FLAG aligned, pixel offset 0) and numpy's
    ``np.float`` (their anchor code) for the duration; both put back afterwards."""
    from up.utils.general.global_flag import ALIGNED_FLAG

    saved = (ALIGNED_FLAG.aligned, ALIGNED_FLAG.offset)
    ALIGNED_FLAG.aligned, ALIGNED_FLAG.offset = True, 0
    setattr(np, "float", float)
    try:
        yield
    finally:
        ALIGNED_FLAG.aligned, ALIGNED_FLAG.offset = saved
        delattr(np, "float")


def yolox_post_process(up, num_classes: int, loss: str = "efl") -> nn.Module:
    """Their ``retina_post_iou`` as {efl,eqfl}_yolox_*.yaml configure it (``loss`` "efl":
    EFL gamma_b 2, alpha 0.25, s 4; "eqfl": EQFL gamma_b 2, s 4, trained on the IoU of the
    decoded box; 3 levels; GIoU + L1; IoU-branch BCE; ATSS top 18 with IoU; anchors {3, 4}),
    ``num_classes`` foreground classes. Their loss registry stands in for the
    ``build_loss`` import_up leaves empty, ``accuracy_v2`` returns 0 (their accuracy module
    needs sklearn), their compiled focal-loss names (unused by EQFL) are None; build and
    call it under :func:`aligned`."""
    from up.utils.general.registry_factory import LOSSES_REGISTRY

    for name in ("SigmoidFocalLossFunction", "SoftmaxFocalLossFunction",
                 "CrossSigmoidFocalLossFunction"):
        if not hasattr(sys.modules["up.extensions"], name):
            setattr(sys.modules["up.extensions"], name, None)
    for name in ("up.tasks.det.models.losses.iou_loss", "up.tasks.det.models.losses.l1_loss",
                 "up.tasks.det.models.losses.entropy_loss",
                 "up.tasks.det.plugins.efl.models.losses.eqfl"):
        importlib.import_module(name)
    sys.modules["up.utils.model.accuracy"].accuracy_v2 = lambda *args, **kwargs: [torch.zeros(1)]
    up.post.build_loss = LOSSES_REGISTRY.build
    cls_loss = {"efl": {"type": "equalized_focal_loss", "kwargs": {"focal_alpha": 0.25}},
                "eqfl": {"type": "equalized_quality_focal_loss", "kwargs": {}}}[loss]
    cls_loss["kwargs"].update(num_classes=num_classes + 1, focal_gamma=2.0, scale_factor=4.0,
                              fpn_levels=3)
    cfg = {
        "cls_loss": cls_loss,
        "iou_branch_loss": {"type": "sigmoid_cross_entropy"},
        "loc_loss": {"type": "compose_loc_loss", "kwargs": {"loss_cfg": [
            {"type": "iou_loss", "kwargs": {"loss_type": "giou", "loss_weight": 1.0}},
            {"type": "l1_loss", "kwargs": {"loss_weight": 1.0}}]}},
        "anchor_generator": {"type": "hand_craft",
                             "kwargs": {"anchor_ratios": [1], "anchor_scales": [3, 4]}},
        "roi_supervisor": {"type": "atss", "kwargs": {"top_n": 18, "use_iou": True}},
        "roi_predictor": {"type": "base_multicls", "kwargs": {
            "pre_nms_score_thresh": 0, "pre_nms_top_n": 1000, "post_nms_top_n": 1000,
            "roi_min_size": 0, "merger": {"type": "retina_multicls", "kwargs": {
                "top_n": 300, "nms": {"type": "naive", "nms_iou_thresh": 0.65}}}}},
    }
    return up.post.IOUPostProcess(num_classes + 1, cfg)


def postprocess_yolox(up, preds, image_size, strides=(8, 16, 32)):
    """Their YOLOX-IP test path (efl_yolox_*.yaml's ``retina_post_iou``) under their
    ``runtime.aligned: true`` (pixel offset 0, anchors {3, 4} x stride centred at i x
    stride), the flag put back afterwards: class-major permute, sigmoid(cls) x
    sigmoid(iou), ``base_multicls`` (pre-NMS top 1000), ``retina_multicls`` (NMS 0.65,
    top 300). Returns (N, 7): batch index, x1, y1, x2, y2, score, class (1-based)."""
    host = SimpleNamespace(class_first=True, num_anchors=2, class_activation="sigmoid")
    with aligned():
        permuted, _ = up.post.IOUPostProcess.permute_preds(host, preds)
        activated = up.post.IOUPostProcess.apply_activation(host, permuted, True)
        gen = up.anchors.HandCraftAnchorGenerator(anchor_ratios=[1], anchor_scales=[3, 4])
        shapes = [(p[0].shape[2], p[0].shape[3], 2 * p[0].shape[2] * p[0].shape[3], s)
                  for p, s in zip(preds, strides)]
        predictor = up.predictor.RoiPredictorMultiCls(
            pre_nms_score_thresh=0, pre_nms_top_n=1000, post_nms_top_n=1000, roi_min_size=0,
            merger={"type": "retina_multicls",
                    "kwargs": {"top_n": 300, "nms": {"type": "naive", "nms_iou_thresh": 0.65}}},
        )
        h, w = image_size
        return predictor.predict(gen.get_anchors(shapes), activated,
                                 [[h, w, 1.0, h, w, False]])["dt_bboxes"]


class _Runner:
    """What their hooks keep of a runner (a weak reference; ``model``)."""

    def __init__(self, model):
        self.model = model


def gradient_collector(det: nn.Module, levels: int = 3):
    """Their ``gradient_collector`` hook (``up/utils/general/hook_helper.py``) on ``det`` as
    efl_yolox_*.yaml configure it: full backward hooks on ``roi_head.cls_preds.{0,1,2}``
    feeding ``post_process.cls_loss.collect_grad``. Their hook module's imports that this
    needs not (pandas metrics, psutil) are empty stand-ins. Returns (hook, runner): keep both."""
    root = os.path.dirname(sys.modules["up"].__path__[0])
    for name in ("up.data", "up.data.metrics"):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [os.path.join(root, *name.split("."))]
            sys.modules[name] = module
    stand_ins = {"up.data.metrics.base_evaluator": {"Metric": object},
                 "up.utils.env.analysis_utils": {"get_memory_info": None, "split_node": None}}
    for name, attrs in stand_ins.items():
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module
    hooks = importlib.import_module("up.utils.general.hook_helper")
    runner = _Runner(det)
    hook = hooks.GradientCollector(runner, hook_module=[f"roi_head.cls_preds.{i}" for i in range(levels)],
                                   collect_func_module="post_process.cls_loss")
    return hook, runner


def build_detector(up, depth: int, num_classes: int) -> nn.Module:
    """Their improved detector's network as in efl_improved_baseline_r{50,101}_2x_rfs.yaml,
    ``num_classes`` foreground classes (+ background, their convention); eval mode."""
    det = nn.Module()
    det.backbone = getattr(up.resnet, f"resnet{depth}")(
        frozen_layers=[0, 1], out_layers=[2, 3, 4], out_strides=[8, 16, 32],
        normalize={"type": "freeze_bn"}, initializer={"method": "msra"},
    )
    det.neck = up.fpn.FPN(
        inplanes=[512, 1024, 2048], outplanes=256, start_level=3, num_level=5,
        out_strides=STRIDES, downsample="conv", upsample="nearest",
        initializer={"method": "xavier"},
    )
    det.roi_head = up.head.RetinaHeadWithIOU(
        inplanes=256, feat_planes=256, num_classes=num_classes + 1,
        normalize={"type": "gn", "kwargs": {"num_groups": 32}},
        initializer={"method": "normal", "std": 0.01}, init_prior=0.001, num_anchors=2,
        class_activation="sigmoid",
    )
    det.post_process = nn.Module()
    det.post_process.cls_loss = up.efl.EqualizedFocalLoss(num_classes=num_classes + 1)
    return det.eval()


def perturb(model: nn.Module, seed: int) -> None:
    """Random weights standing in for trained ones: every conv weight, every bias, every
    norm's statistics and affine, the EFL state. Box deltas come out O(0.1), a trained
    regressor's size: with O(1) deltas many boxes reach the exp(4.1) x anchor clamp, and
    float32 rounding of their pre-clip corners (~1e4 px) alone differs by > 1e-3 px."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean") or name.endswith(".bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif t.dim() == 1:  # norm weights, EFL state
                t.copy_(0.8 + 0.4 * torch.rand(t.shape, generator=g))
            else:  # conv weights, scaled to keep activations O(1) through 100 layers
                fan_in = t[0].numel()
                scale = 0.1 if name.startswith("roi_head.box_subnet_pred") else 1.0
                t.copy_(torch.randn(t.shape, generator=g) * scale * (1.0 / fan_in) ** 0.5)


def save_checkpoint(model: nn.Module, path: str) -> None:
    """In their saver's format (``saver_helper.py``): DDP's ``module.`` prefix, extra keys."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": state, "epoch": 24, "iter": 1000}, path)


def preprocess(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 RGB -> their input: /255, ImageNet normalise, 0-padded to 64."""
    x = (image.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    h, w = x.shape[1:]
    return nn.functional.pad(x, (0, -w % 64, 0, -h % 64))[None]


def forward(det: nn.Module, image: torch.Tensor):
    """Raw head outputs per level: [(cls (1, K*A, H, W), loc (1, A*4, H, W), iou (1, A, H, W))]."""
    feats = det.neck(det.backbone({"image": preprocess(image)}))
    return det.roi_head({"features": feats["features"]})["preds"]


def anchors(up, preds):
    """Their anchors per level (h * w * A, 4), in their +1 convention (x2 = right edge - 1)."""
    setattr(np, "float", float)  # their anchor code uses np.float (gone in numpy >= 1.24)
    gen = up.anchors.HandCraftAnchorGenerator(anchor_ratios=[1], anchor_scales=[6, 8])
    shapes = [(p[0].shape[2], p[0].shape[3], 2 * p[0].shape[2] * p[0].shape[3], s)
              for p, s in zip(preds, STRIDES)]
    try:
        return gen.get_anchors(shapes)
    finally:
        delattr(np, "float")


def postprocess(up, preds, image_size):
    """Their test path (``IOUPostProcess.forward`` in eval): class-major permute,
    sigmoid(cls) * sigmoid(iou), ``base_multicls`` predictor, ``retina_multicls`` merger.

    Returns:
        (N, 7): batch index, x1, y1, x2, y2 (their +1 convention), score, class (1-based).
    """
    host = SimpleNamespace(class_first=True, num_anchors=2, class_activation="sigmoid")
    permuted, _ = up.post.IOUPostProcess.permute_preds(host, preds)
    activated = up.post.IOUPostProcess.apply_activation(host, permuted, True)
    predictor = up.predictor.RoiPredictorMultiCls(
        pre_nms_score_thresh=0, pre_nms_top_n=6000, post_nms_top_n=1000, roi_min_size=0,
        merger={"type": "retina_multicls",
                "kwargs": {"top_n": 300, "nms": {"type": "naive", "nms_iou_thresh": 0.5}}},
    )
    h, w = image_size
    image_info = [[h, w, 1.0, h, w, False]]
    return predictor.predict(anchors(up, preds), activated, image_info)["dt_bboxes"]


def convert_tool():
    """tools/convert_up_checkpoint.py as a module (its ``main(argv)`` returns the exit status)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "convert_up_checkpoint", os.path.join(ROOT, "tools", "convert_up_checkpoint.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool
