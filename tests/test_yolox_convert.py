"""tools/convert_up_checkpoint.py on the EFL authors' YOLOX-IP files (United-Perception
52aaeb9, their network imported from ../shared/vendor at run time; skips without it): their
network with random weights (every BatchNorm and bias perturbed), saved as their saver does
(trained weights under 'model' with DDP's 'module.', their EMA under 'ema' ->
'ema_state_dict'), converted with a LazyConfig whose model is configs/common/models/
yolox_ip.py's, loaded strictly: head outputs, detections and EFL state equal those of the
copy converted. Bad input: one paragraph naming the config, exit 2, nothing written."""

import copy
import os

import pytest
import torch

import up_reference as ref
from helpers import ROOT
from yolox_weights import A, DET_SIZES, K, det_image, max_rel, padded, perturb

TOLERANCE = {"cls": 2e-4, "box": 2e-4, "iou": 2e-4, "boxes (px)": 1e-3, "scores": 1e-5}


@pytest.fixture(scope="module")
def upx(tmp_path_factory):
    return ref.import_up_yolox(ref.unpack(str(tmp_path_factory.mktemp("united_perception"))))


def write_config(folder, size: str, loss: str, name: str = None) -> str:
    """A LazyConfig file in ``folder``: configs/common/models/yolox_ip.py's model, K classes,
    ``size`` ("s", "m", another to be refused, or (depth, width)), ``loss`` "focal", "efl" or "eqfl" (s 4)."""
    path = os.path.join(str(folder), name or f"{loss}_yolox_ip_{size[0]}.py")
    lines = ["import sys", f"sys.path.insert(0, {ROOT!r})",
             "from detectron2.config import LazyConfig",
             "from configs.common.efl import use_efl",
             "from configs.common.models.yolox_ip import set_yolox_size, use_eqfl_quality",
             f"model = LazyConfig.load({os.path.join(ROOT, 'configs/common/models/yolox_ip.py')!r}).model",
             f"model.num_classes = {K}",
             f"set_yolox_size(model, depth={size[0]}, width={size[1]})" if isinstance(size, tuple)
             else f"set_yolox_size(model, {size!r})"]
    if loss == "efl":
        lines.append('use_efl(model, train_dataset="none", gamma_b=2.0, scale_factor=4.0, alpha=0.25)')
    elif loss == "eqfl":
        lines.append('use_eqfl_quality(model, train_dataset="none", gamma_b=2.0, scale_factor=4.0)')
    if loss != "focal":
        lines.append("model.cls_loss.class_groups = None")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def their_network(upx, size: str, loss: str, seed: int):
    """Their network with perturbed weights and a drawn EFL state in post_process."""
    torch.manual_seed(0)
    det = ref.build_yolox(upx, size, K)
    perturb(det, seed=seed)
    with ref.aligned():
        det.post_process = ref.yolox_post_process(upx.base, K, loss)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("pos_grad", "neg_grad", "pos_neg"):
            getattr(det.post_process.cls_loss, name).copy_(torch.rand(K, generator=g))
    return det.eval()


def save_like_theirs(path: str, trained, ema=None) -> None:
    """Their saver's file (BaseRunner.get_dump_dict): 'model' from the DDP-wrapped model
    ('module.'), 'ema' from their EMA (built before the wrap: no prefix)."""
    out = {"epoch": 300, "iter": 1234, "optimizer": {}, "lr_scheduler": {},
           "model": {f"module.{k}": v for k, v in trained.state_dict().items()}}
    if ema is not None:
        out["ema"] = {"ema_state_dict": ema.state_dict(), "decay": 0.9998, "warmup": 1,
                      "inner_T": 1}
    torch.save(out, path)


def convert(args, capsys):
    """(exit status, stdout, stderr) of the tool."""
    status = ref.convert_tool().main(list(args))
    out, err = capsys.readouterr()
    return status, out, err.strip()


def load(config: str, converted: str):
    from detectron2.config import LazyConfig, instantiate

    from efl.export import load_weights

    model = instantiate(LazyConfig.load(config).model)
    load_weights(model, converted)
    return model.eval()


def output_diffs(upx, theirs, model):
    """Max relative differences of the head outputs (every level, class-major reordered)
    and absolute ones of the detections, theirs against ours."""
    images = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(3)) * 255
    diffs = {}
    with torch.no_grad():
        _, preds = ref.forward_yolox(theirs, images)
        feats = model.backbone(images)
        outs = model.head([feats[f] for f in model.head_in_features])
        for level, (cls, loc, obj) in enumerate(preds):
            n, _, h, w = cls.shape
            cls = cls.reshape(n, K, A, h, w).transpose(1, 2).reshape(n, A * K, h, w)
            for name, a, b in zip(("cls", "box", "iou"), [o[level] for o in outs], (cls, loc, obj)):
                diffs[name] = max(diffs.get(name, 0.0), max_rel(a, b))
        hw = DET_SIZES[1]
        image = det_image(hw)
        dets_t = ref.postprocess_yolox(upx.base, ref.forward_yolox(theirs, padded(image))[1], hw)
        dets_o = model([{"image": image}])[0]["instances"]
    assert len(dets_t) == len(dets_o) >= 100
    dets_t = dets_t[dets_t[:, 5].argsort(descending=True)]
    assert torch.equal(dets_t[:, 6].long() - 1, dets_o.pred_classes)
    diffs["boxes (px)"] = (dets_t[:, 1:5] - dets_o.pred_boxes.tensor).abs().max().item()
    diffs["scores"] = (dets_t[:, 5] - dets_o.scores).abs().max().item()
    return diffs


@pytest.mark.parametrize("size,loss,ema", [("s", "efl", True), ("m", "eqfl", False)],
                         ids=["S-EFL-with-EMA", "M-EQFL-without-EMA"])
def test_their_file_converts_and_computes_what_theirs_does(upx, tmp_path, capsys, size, loss, ema):
    trained = their_network(upx, size, loss, seed=1)
    averaged = their_network(upx, size, loss, seed=2) if ema else None
    source, converted = str(tmp_path / "up.pth"), str(tmp_path / "ours.pth")
    save_like_theirs(source, trained, averaged)
    config = write_config(tmp_path, size, loss)
    status, out, err = convert(["--config-file", config, "--input", source, "--output", converted],
                               capsys)
    assert status == 0, err
    assert ("converted their EMA" in out) == ema and "class-major" in out, out
    expected = averaged if ema else trained  # the copy their evaluation uses
    model = load(config, converted)
    for name in ("pos_grad", "neg_grad", "pos_neg"):
        assert torch.equal(getattr(model.cls_loss, name), getattr(expected.post_process.cls_loss, name))
    diffs = output_diffs(upx, expected, model)
    with capsys.disabled():
        print(f"\nconverted YOLOX-IP-{size.upper()} {loss.upper()}: "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    for key, tol in TOLERANCE.items():
        assert diffs[key] <= tol, (key, diffs)
    if ema:  # --copy model: the trained weights instead
        status, out, _ = convert(["--config-file", config, "--input", source, "--output",
                                  converted, "--copy", "model"], capsys)
        assert status == 0 and "converted the trained one" in out
        state = torch.load(converted, weights_only=True)["model"]
        stem = "backbone.bottom_up.stem.conv.conv.weight"
        assert torch.equal(state[stem], trained.state_dict()["backbone.stem.conv_block.conv.weight"])


@pytest.fixture(scope="module")
def small_file(upx, tmp_path_factory):
    """Their YOLOX-IP-S EFL file (with an EMA copy) and the folder it is in."""
    folder = tmp_path_factory.mktemp("yolox_s")
    det = their_network(upx, "s", "efl", seed=1)
    path = str(folder / "efl_yolox_small.pth")
    save_like_theirs(path, det, copy.deepcopy(det))
    return path, folder


def test_focal_config_drops_their_efl_state_and_says_so(small_file, tmp_path, capsys):
    source, _ = small_file
    config = write_config(tmp_path, "s", "focal")
    converted = str(tmp_path / "ours.pth")
    status, out, err = convert(["--config-file", config, "--input", source, "--output", converted],
                               capsys)
    assert status == 0, err
    assert "dropped post_process.cls_loss.{pos_grad, neg_grad, pos_neg}" in out, out
    load(config, converted)  # loads strictly


def test_training_refuses_their_file_unconverted(small_file):
    """train.init_checkpoint=<their YOLOX-IP file>: refused, saying to convert it first."""
    from efl.convert import adapt_checkpoint
    from efl.errors import CheckpointError

    source, _ = small_file
    with pytest.raises(CheckpointError, match="tools/convert_up_checkpoint.py"):
        adapt_checkpoint(torch.load(source, weights_only=True), None, source)


@pytest.mark.parametrize("case", ["other size", "improved detector's file",
                                  "size of the config not S or M", "unknown size",
                                  "class count", "no config", "improved config"])
def test_convert_refuses_what_does_not_fit_in_one_paragraph(upx, small_file, tmp_path, capsys, case):
    source, folder = small_file
    config, overrides = write_config(tmp_path, "s", "efl"), []
    if case == "other size":
        config = write_config(tmp_path, "m", "efl")
        expected = ["YOLOX-IP-S (depth 0.33, width 0.5)", "YOLOX-IP-M (depth 0.67, width 0.75)"]
    elif case == "improved detector's file":
        source = str(tmp_path / "efl_improved_baseline_r50.pth")
        ref.save_checkpoint(ref.build_detector(upx.base, 50, K), source)
        expected = ["their improved detector", "not of their YOLOX-IP", "YOLOXIP"]
    elif case == "size of the config not S or M":
        config = write_config(tmp_path, (0.33, 0.25), "efl", name="tiny.py")
        expected = ["it is YOLOX-IP-S", "a CSPDarknet of no YOLOX-IP size (stem 16 channels"]
    elif case == "unknown size":
        config = write_config(tmp_path, "l", "efl")
        expected = ["size 'l' is not a YOLOX-IP size", "'s', 'm'"]
    elif case == "class count":
        overrides = ["model.num_classes=5"]
        expected = [f"it has {K} classes", "the config 5 (model.num_classes)"]
    elif case == "no config":
        config, expected = None, ["YOLOX-IP-S", "give --config-file"]
    else:
        config = os.path.join(ROOT, "configs/LVISv1/efl_improved_R_50_FPN_24ep.py")
        expected = ["YOLOX-IP-S", "not of their improved detector"]
    output = str(tmp_path / "out.pth")
    args = ["--input", source, "--output", output] + (["--config-file", config] if config else [])
    status, _, err = convert(args + overrides, capsys)
    with capsys.disabled():
        print(f"\n{case}: {err}")
    assert status == 2 and not os.path.exists(output), err
    assert err.startswith("ERROR: ") and "\n" not in err and "Traceback" not in err, err
    assert all(text in err for text in expected + ([config] if config else [])), err
