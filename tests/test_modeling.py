"""EFLRetinaNet / EFLFCOS: a training step, images without annotations, inference, the
YAML (from_config) path, and that only the classification loss differs from stock."""

import copy
import os

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from efl import EFLFCOS, EFLRetinaNet, SigmoidFocalLoss, add_efl_config
from efl.checkpoint import EFLCheckpointer
from efl.losses import EqualizedFocalLoss
from helpers import ROOT
K = 7


def tiny(kind: str, efl: bool):
    """A small ResNet-18-FPN RetinaNet or FCOS from the project's common configs."""
    cfg = LazyConfig.load(os.path.join(ROOT, f"configs/common/models/{kind}.py"))
    model = cfg.model
    model.num_classes = K
    model.backbone.bottom_up.stages.depth = 18
    del model.backbone.bottom_up.stages.stride_in_1x1  # bottleneck-only option
    model.backbone.bottom_up.stages.norm = "BN"
    model.backbone.bottom_up.stem.norm = "BN"
    model.backbone.bottom_up.freeze_at = 0
    model.backbone.top_block.in_channels = 512
    model.backbone.out_channels = 32
    model.head.conv_dims = [32]
    model.head.input_shape = [{"channels": 32}] * 5
    model.test_score_thresh = 0.0
    if efl:
        from efl.compat import FCOS as _  # noqa: F401  (config targets)

        model._target_ = EFLFCOS if kind == "fcos" else EFLRetinaNet
        model.cls_loss = {"_target_": EqualizedFocalLoss, "num_classes": K,
                     "class_groups": ["f", "f", "c", "c", "r", "r", "r"]}
    return model


def make_model(kind, efl, seed=0):
    torch.manual_seed(seed)
    return instantiate(copy.deepcopy(tiny(kind, efl)))


def batch(num_boxes=(2, 0), size=64, seed=0):
    """Random images; the second one has no annotations by default."""
    gen = torch.Generator().manual_seed(seed)
    inputs = []
    for n in num_boxes:
        image = torch.randint(0, 255, (3, size, size), generator=gen).float()
        inst = Instances((size, size))
        xy = torch.rand(n, 2, generator=gen) * size / 2
        wh = 8 + torch.rand(n, 2, generator=gen) * size / 3
        inst.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1))
        inst.gt_classes = torch.randint(0, K, (n,), generator=gen)
        inputs.append({"image": image, "instances": inst, "height": size, "width": size})
    return inputs


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_training_step_updates_efl_state(kind):
    model = make_model(kind, efl=True)
    model.train()
    with EventStorage() as storage:
        losses = model(batch((3, 2)))
        total = sum(losses.values())
        total.backward()
        names = set(storage.latest())
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.cls_loss.pos_grad.sum() > 0 and model.cls_loss.neg_grad.sum() > 0
    assert model.cls_loss.pos_neg.min() < 1  # g moved: the statistics are really updated
    assert {"efl/pos_neg_r", "efl/gamma_c", "efl/pos_neg_f"} <= names
    # The EFL state is part of the model's state_dict.
    assert {"cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg"} <= set(model.state_dict())


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
@pytest.mark.parametrize("efl", [True, False])
def test_images_without_annotations_train(kind, efl):
    model = make_model(kind, efl)
    model.train()
    with EventStorage():
        losses = model(batch((0, 0)))
        sum(losses.values()).backward()
        mixed = model(batch((2, 0)))
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(v) for v in mixed.values())


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_inference_returns_instances(kind):
    model = make_model(kind, efl=True)
    model.eval()
    model.max_detections_per_image = 20
    with torch.no_grad():
        out = model([{"image": b["image"], "height": 96, "width": 96} for b in batch((1, 1))])
    assert len(out) == 2
    inst = out[0]["instances"]
    assert inst.image_size == (96, 96)
    assert 0 < len(inst) <= 20
    assert inst.pred_classes.max() < K and inst.scores.min() >= 0


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_only_classification_loss_differs_from_stock(kind):
    """At the initial EFL state (g = 1) EFL is focal loss: identical losses to stock."""
    stock, efl = make_model(kind, efl=False), make_model(kind, efl=True)
    efl.load_state_dict(stock.state_dict(), strict=False)
    data = batch((3, 1))
    with EventStorage():
        a, b = stock(copy.deepcopy(data)), efl(copy.deepcopy(data))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_efl_num_classes_must_match_model():
    cfg = tiny("retinanet", efl=True)
    cfg.cls_loss.num_classes = K + 1
    cfg.cls_loss.class_groups = None
    with pytest.raises(ValueError, match=f"num_classes={K + 1}.*num_classes={K}"):
        instantiate(cfg)


def _yaml_cfg(meta_arch):
    cfg = get_cfg()
    add_efl_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs/yaml/efl_retinanet_R_50_FPN.yaml"))
    cfg.MODEL.META_ARCHITECTURE = meta_arch
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    cfg.MODEL.RETINANET.NUM_CLASSES = K
    cfg.MODEL.FCOS.NUM_CLASSES = K
    cfg.MODEL.FCOS.NUM_CONVS = 1
    cfg.MODEL.EFL.SCALE_FACTOR = 4.0
    cfg.DATASETS.TRAIN = ()
    return cfg


@pytest.mark.parametrize("meta_arch, cls", [("EFLRetinaNet", EFLRetinaNet), ("EFLFCOS", EFLFCOS)])
def test_yaml_config_builds_registered_model(meta_arch, cls):
    model = build_model(_yaml_cfg(meta_arch))
    assert type(model) is cls
    assert model.cls_loss.scale_factor == 4.0 and model.cls_loss.num_classes == K
    model.train()
    with EventStorage():
        losses = model(batch((2, 0)))
    assert all(torch.isfinite(v) for v in losses.values())


def _perturb(model, seed=0):
    """Every norm's statistics and affine and every bias moved off their initial values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or name.startswith("cls_loss."):
                continue
            if name.endswith("running_var") or (t.dim() == 1 and name.endswith(".weight")):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif name.endswith("running_mean") or name.endswith(".bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_focal_module_in_the_slot_is_the_stock_model(kind):
    """The twins differ in ``cls_loss`` alone: with SigmoidFocalLoss there, the model gives
    the stock RetinaNet's losses bitwise (FCOS: to float rounding, its sum runs over
    (N, R, K) where ours runs over (N * R, K)), in training mode, on random weights."""
    stock = make_model(kind, efl=False)
    cfg = tiny(kind, efl=True)
    cfg.cls_loss = {"_target_": SigmoidFocalLoss, "num_classes": K,
                    "alpha": "${..focal_loss_alpha}", "gamma": "${..focal_loss_gamma}"}
    twin = instantiate(copy.deepcopy(cfg))
    assert type(twin.cls_loss) is SigmoidFocalLoss and not list(twin.cls_loss.state_dict())
    _perturb(stock)
    twin.load_state_dict(stock.state_dict())  # strict: nothing but the loss differs
    data = batch((3, 1))
    for step in range(2):  # the second step after an SGD step on each
        with EventStorage():
            a, b = stock(copy.deepcopy(data)), twin(copy.deepcopy(data))
        assert a.keys() == b.keys()
        for k in a:
            if kind == "retinanet":
                assert torch.equal(a[k], b[k]), (step, k, a[k], b[k])
            else:
                torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=0)
        for model, losses in ((stock, a), (twin, b)):
            model.zero_grad()
            sum(losses.values()).backward()
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p -= 1e-3 * p.grad


def test_cls_loss_that_needs_quality_is_refused():
    from efl import QualityFocalLoss

    cfg = tiny("retinanet", efl=True)
    cfg.cls_loss = {"_target_": QualityFocalLoss, "num_classes": K}
    with pytest.raises(ValueError, match="QualityFocalLoss needs quality targets but EFLRetinaNet"):
        instantiate(cfg)


def test_yaml_loss_key_builds_the_focal_twin():
    cfg = _yaml_cfg("EFLRetinaNet")
    cfg.MODEL.EFL.LOSS = "focal"
    cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 1.5
    model = build_model(cfg)
    assert type(model.cls_loss) is SigmoidFocalLoss
    assert (model.cls_loss.alpha, model.cls_loss.gamma) == (0.25, 1.5)


def test_old_checkpoint_keys_are_mapped_on_load(tmp_path):
    """A checkpoint written when the loss was the submodule ``efl`` resumes exactly."""
    model = make_model("retinanet", efl=True)
    model.train()
    with EventStorage():
        sum(model(batch((3, 2))).values()).backward()
    old = {("efl." + k[len("cls_loss."):] if k.startswith("cls_loss.") else k): v
           for k, v in model.state_dict().items()}
    assert "efl.pos_grad" in old and not any(k.startswith("cls_loss.") for k in old)
    torch.save({"model": old}, tmp_path / "model_0000001.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    fresh = make_model("retinanet", efl=True, seed=1)
    EFLCheckpointer(fresh, save_dir=str(tmp_path)).resume_or_load("", resume=True)  # exact fit
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
