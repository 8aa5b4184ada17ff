"""The improved detector with a converted checkpoint of the authors' detector computes what
their own code computes (United-Perception 52aaeb9, imported from ../shared/vendor at run
time): same per-level outputs, anchors and final 300 detections, R-50 and R-101, on random
weights with every norm and bias perturbed, on an image size that is a multiple of 64 and
one that is not."""

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


def convert(tmp_path, det, depth):
    """Their checkpoint on disk -> tools/convert_up_checkpoint.py -> our model, loaded
    strictly as tools/predict.py and --eval-only load it."""
    from detectron2.config import instantiate

    from efl.engine import load_config
    from efl.export import load_weights

    source, target = str(tmp_path / "up.pth"), str(tmp_path / "ours.pth")
    ref.save_checkpoint(det, source)
    config = os.path.join(ROOT, f"configs/LVISv1/efl_improved_R_{depth}_FPN_24ep.py")
    overrides = [f"model.num_classes={NUM_CLASSES}", "train.device=cpu"]
    assert ref.convert_tool().main(["--input", source, "--output", target, "--config-file", config,
                         *overrides]) == 0
    cfg = load_config(config, overrides)
    cfg.model.efl.class_groups = None
    model = instantiate(cfg.model)
    load_weights(model, target)
    return model.eval()


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


@pytest.mark.parametrize("depth, seeds", [(50, [0, 1]), (101, [2])])
def test_converted_detector_matches_the_authors_code(up, tmp_path, depth, seeds):
    torch.manual_seed(0)
    det = ref.build_detector(up, depth, NUM_CLASSES)
    ref.perturb(det, seed=depth)
    model = convert(tmp_path, det, depth)
    for name in ("pos_grad", "neg_grad", "pos_neg"):  # their EFL state -> our EFL buffers
        assert torch.equal(getattr(model.efl, name), getattr(det.post_process.cls_loss, name))
    for seed in seeds:
        for size in SIZES:
            diffs = compare(up, det, model, image(seed, size))
            print(f"R-{depth} image {seed} {size}: "
                  + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
            for key, tol in TOLERANCES.items():
                assert diffs[key] <= tol, (key, diffs)
