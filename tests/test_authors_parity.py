"""The improved detector with a converted checkpoint of the authors' detector computes what
their own code computes (United-Perception 52aaeb9, imported from ../shared/vendor at run
time): same per-level outputs, anchors and final 300 detections, R-50 and R-101, on random
weights with every norm and bias perturbed, on an image size that is a multiple of 64 and
one that is not."""

import logging
import os

import pytest
import torch

import up_reference as ref
from helpers import ROOT

NUM_CLASSES = 24  # their code takes any class count; small keeps the test cheap, enough for 300
SIZES = [(128, 192), (100, 150)]  # (H, W): a multiple of 64, and not one


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    return ref.import_up(ref.unpack(str(tmp_path_factory.mktemp("united_perception"))))


def config_path(depth):
    return os.path.join(ROOT, f"configs/LVISv1/efl_improved_R_{depth}_FPN_24ep.py")


OVERRIDES = [f"model.num_classes={NUM_CLASSES}", "train.device=cpu"]


def convert(folder, det, depth):
    """Their checkpoint on disk -> tools/convert_up_checkpoint.py -> our model, loaded
    strictly as tools/predict.py and --eval-only load it. Returns (model, converted file)."""
    from detectron2.config import instantiate

    from efl.engine import load_config
    from efl.export import load_weights

    source, target = os.path.join(folder, "up.pth"), os.path.join(folder, "ours.pth")
    ref.save_checkpoint(det, source)
    assert ref.convert_tool().main(["--input", source, "--output", target, "--config-file",
                                    config_path(depth), *OVERRIDES]) == 0
    cfg = load_config(config_path(depth), OVERRIDES)
    cfg.model.cls_loss.class_groups = None
    model = instantiate(cfg.model)
    load_weights(model, target)
    return model.eval(), target


@pytest.fixture(scope="module")
def r50(up, tmp_path_factory):
    """Their R-50 detector with random weights, and ours converted from its checkpoint."""
    torch.manual_seed(0)
    det = ref.build_detector(up, 50, NUM_CLASSES)
    ref.perturb(det, seed=50)
    model, converted = convert(str(tmp_path_factory.mktemp("r50")), det, 50)
    return det, model, converted


def image(seed, size):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8)


def ours_raw(model, img):
    images = model.preprocess_image([{"image": img}])
    feats = model.backbone(images.tensor)
    feats = [feats[f] for f in model.head_in_features]
    return model.head(feats), model.anchor_generator(feats)


def compare(up, det, model, img):
    """Max absolute differences per output; asserts classes and counts equal."""
    a = 2
    diffs = {}
    with torch.no_grad():
        theirs = ref.forward(det, img)
        (logits, deltas, ious), anchors = ours_raw(model, img)
        for (cls_t, loc_t, iou_t), cls_o, loc_o, iou_o in zip(theirs, logits, deltas, ious):
            n, _, h, w = cls_t.shape
            cls_t = cls_t.view(n, -1, a, h, w).transpose(1, 2).reshape(cls_o.shape)
            for key, x, y in (("cls logits", cls_t, cls_o), ("box deltas", loc_t, loc_o),
                              ("IoU logits", iou_t, iou_o)):
                diffs[key] = max(diffs.get(key, 0.0), (x - y).abs().max().item())
        their_anchors = ref.anchors(up, theirs)
        diffs["anchors"] = max((t + torch.tensor([0, 0, 1, 1]) - o.tensor).abs().max().item()
                               for t, o in zip(their_anchors, anchors))
        dets_t = ref.postprocess(up, theirs, img.shape[1:])
        dets_o = model([{"image": img, "height": img.shape[1], "width": img.shape[2]}])[0]
    dets_o = dets_o["instances"]
    assert len(dets_t) == len(dets_o) == 300, (len(dets_t), len(dets_o))
    order_t = dets_t[:, 5].argsort(descending=True)
    dets_t = dets_t[order_t]
    boxes_t = dets_t[:, 1:5] + torch.tensor([0, 0, 1, 1])
    assert torch.equal(dets_t[:, 6].long() - 1, dets_o.pred_classes)
    diffs["det boxes (px)"] = (boxes_t - dets_o.pred_boxes.tensor).abs().max().item()
    diffs["det scores"] = (dets_t[:, 5] - dets_o.scores).abs().max().item()
    return diffs


TOLERANCES = {"cls logits": 1e-4, "box deltas": 1e-4, "IoU logits": 1e-4, "anchors": 0.0,
              "det boxes (px)": 1e-3, "det scores": 1e-5}


def check_parity(up, det, model, seeds):
    for name in ("pos_grad", "neg_grad", "pos_neg"):  # their EFL state -> our EFL buffers
        assert torch.equal(getattr(model.cls_loss, name), getattr(det.post_process.cls_loss, name))
    for seed in seeds:
        for size in SIZES:
            diffs = compare(up, det, model, image(seed, size))
            print(f"image {seed} {size}: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
            for key, tol in TOLERANCES.items():
                assert diffs[key] <= tol, (key, diffs)


def test_converted_r50_matches_the_authors_code(up, r50):
    det, model, _ = r50
    check_parity(up, det, model, seeds=[0, 1])


def test_converted_r101_matches_the_authors_code(up, tmp_path):
    torch.manual_seed(0)
    det = ref.build_detector(up, 101, NUM_CLASSES)
    ref.perturb(det, seed=101)
    model, _ = convert(str(tmp_path), det, 101)
    check_parity(up, det, model, seeds=[2])


@pytest.mark.parametrize("case", ["not a checkpoint", "ours, not theirs", "class count", "depth"])
def test_convert_refuses_what_does_not_fit_in_one_paragraph(r50, tmp_path, capsys, case):
    _, _, converted = r50
    source = os.path.join(os.path.dirname(converted), "up.pth")
    config, overrides, expected = config_path(50), OVERRIDES, []
    if case == "not a checkpoint":
        source = str(tmp_path / "notes.pth")
        with open(source, "w") as f:
            f.write("not a checkpoint\n")
        expected = ["cannot be read as a torch checkpoint"]
    elif case == "ours, not theirs":
        source, expected = converted, ["not a checkpoint of the EFL authors' detector"]
    elif case == "class count":
        overrides = ["model.num_classes=5"]
        expected = [f"it has {NUM_CLASSES} classes", "the config 5 (model.num_classes)"]
    else:
        config, expected = config_path(101), ["ResNet-50", "ResNet-101"]
    output = str(tmp_path / "out.pth")
    status = ref.convert_tool().main(["--input", source, "--output", output,
                                      "--config-file", config, *overrides])
    err = capsys.readouterr().err.strip()
    assert status == 2 and not os.path.exists(output)
    assert err.startswith("ERROR: ") and "\n" not in err and "Traceback" not in err
    assert all(text in err for text in expected), err


def test_predict_runs_the_improved_config_with_the_converted_file(up, tmp_path):
    """tools/predict.py on the CPU with configs/LVISv1/efl_improved_R_50_FPN_24ep.py as it
    is (1203 classes) and a converted checkpoint of their detector."""
    import importlib.util
    import json

    from PIL import Image

    det = ref.build_detector(up, 50, 1203)
    ref.perturb(det, seed=7)
    source, converted = str(tmp_path / "up.pth"), str(tmp_path / "ours.pth")
    ref.save_checkpoint(det, source)
    del det
    assert ref.convert_tool().main(["--input", source, "--output", converted]) == 0
    image_path = str(tmp_path / "photo.png")
    Image.fromarray(image(3, (120, 160)).permute(1, 2, 0).numpy()).save(image_path)
    spec = importlib.util.spec_from_file_location("predict", os.path.join(ROOT, "tools", "predict.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "out"
    # The tool quiets loggers for its process (quiet_inference_logs); in this pytest
    # process that would hide later tests' log records, so the levels are put back.
    loggers = [logging.getLogger(n) for n in ("fvcore", "detectron2", "efl.checkpoint", "efl.engine")]
    levels = [lg.level for lg in loggers]
    try:
        status = tool.main(["--config-file", config_path(50), "--input", image_path, "--output",
                            str(out), "--score-thresh", "0", f"train.init_checkpoint={converted}",
                            "train.device=cpu"])
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    assert status == 0
    results = json.loads((out / "predictions.json").read_text())
    assert len(results) == 300 and (out / "photo.png").exists()


@pytest.mark.parametrize("num_anchors", [1, 2])
def test_authors_statistics_switch_reproduces_their_collector(up, num_anchors):
    """ATSSRetinaNet(efl_statistics="authors") accumulates what their gradient collector
    accumulates from the same gradients; at A = 1 that is the paper's statistics, at A = 2
    it is not (their class-major head read as anchor-major)."""
    from efl.losses import EqualizedFocalLoss, tap_logits
    from efl.modeling.authors_statistics import AuthorsStatistics

    k, a, batch, shapes = 5, num_anchors, 2, [(6, 8), (3, 4), (2, 2)]
    g = torch.Generator().manual_seed(num_anchors)
    # Their raw layout per level: (B, K * A, H, W), channel c * A + a.
    raw = [torch.randn(batch, k * a, h, w, generator=g) for h, w in shapes]
    rows = sum(h * w * a for h, w in shapes)
    labels = torch.randint(0, k + 1, (batch, rows), generator=g)  # 0: background (theirs)
    labels[labels > 0] = torch.randint(1, k + 1, (int((labels > 0).sum()),), generator=g)
    theirs = up.efl.EqualizedFocalLoss(num_classes=k + 1, fpn_levels=len(shapes))
    theirs.forward(torch.zeros(batch, rows, k), labels, reduction="sum")  # caches the targets
    for grad in reversed(raw):  # backward hooks fire from the last level
        theirs.collect_grad(grad)

    # The same gradients in Detectron2's layout: rows (image, level, y, x, a), K columns.
    ours_grad = torch.cat([r.view(batch, k, a, *r.shape[2:]).permute(0, 3, 4, 2, 1)
                           .reshape(batch, -1, k) for r in raw], dim=1).reshape(-1, k)
    targets = torch.nn.functional.one_hot(labels.reshape(-1), k + 1)[:, 1:].float()
    efl = EqualizedFocalLoss(k)
    efl.read_statistics_with(AuthorsStatistics(a))  # what efl_statistics="authors" gives it
    z = torch.zeros(rows * batch, k, requires_grad=True)
    (tap_logits(z, targets, efl) * ours_grad).sum().backward()  # the loss's one tap
    for ours, their in zip((efl.pos_grad, efl.neg_grad), (theirs.pos_grad, theirs.neg_grad)):
        assert torch.allclose(ours, their, rtol=1e-5, atol=1e-5)
    paper = (ours_grad.abs() * targets).sum(0)  # the paper's pos_grad
    assert torch.allclose(paper, efl.pos_grad, rtol=1e-5) == (num_anchors == 1)
