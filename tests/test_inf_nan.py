"""No finite box from a diverged model, on every detector of the ATSS path (as Detectron2's
tests/modeling/test_model_e2e.py ``test_inf_nan_data`` requires of its RetinaNet): inf or
NaN features / head outputs give no detection with a finite box, and the anchors that stay
finite still give theirs."""

import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import ImageList

from helpers import ROOT

K = 5
DETECTORS = {  # config -> the detector it builds
    "improved_focal.py": "ATSSRetinaNet",
    "quality_qfl.py": "QualityATSSRetinaNet",
}


def _model(config):
    cfg = LazyConfig.load(os.path.join(ROOT, "configs/Synthetic", config))
    cfg.model.num_classes = K
    model = instantiate(cfg.model).eval()
    assert type(model).__name__ == DETECTORS[config]
    return model


def _images(h=96, w=128):
    return ImageList(torch.zeros(1, 3, h, w), [(h - 2, w - 2)])


def _assert_no_finite_box(det):
    assert len(det) == 0 or torch.isfinite(det.pred_boxes.tensor).sum() == 0, det


@pytest.mark.parametrize("config", sorted(DETECTORS))
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_inf_nan_features_give_no_finite_box(config, value):
    model = _model(config)
    images = _images()
    with torch.no_grad():
        features = [torch.full_like(f, value) for f in model.backbone(images.tensor).values()]
        predictions = model.head(features)
        assert not torch.isfinite(predictions[0][0]).all()  # the head did diverge
        det = model.forward_inference(images, features, predictions)[0]
    _assert_no_finite_box(det)


@pytest.mark.parametrize("config", sorted(DETECTORS))
@pytest.mark.parametrize("value", [float("inf"), -float("inf"), float("nan")])
def test_non_finite_head_outputs_give_no_finite_box(config, value):
    """Every head output non-finite (the issue's case: inf logits and deltas gave 300 boxes
    of score 1.0 clipped to the image corner)."""
    model = _model(config)
    images = _images()
    with torch.no_grad():
        features = [f for f in model.backbone(images.tensor).values()]
        predictions = [[torch.full_like(p, value) for p in out] for out in model.head(features)]
        det = model.forward_inference(images, features, predictions)[0]
    _assert_no_finite_box(det)


@pytest.mark.parametrize("config", sorted(DETECTORS))
def test_finite_anchors_keep_their_boxes_beside_diverged_ones(config):
    """Deltas inf on the first level only: the detections are those of the other levels
    alone."""
    model = _model(config)
    images = _images()
    with torch.no_grad():
        features = [f for f in model.backbone(images.tensor).values()]
        predictions = model.head(features)
        predictions[1][0] = torch.full_like(predictions[1][0], float("inf"))
        det = model.forward_inference(images, features, predictions)[0]

        logits, deltas, *branches = model._split_predictions(predictions)
        scores = [model.score(c[0], *(b[0] for b in bs)) for c, *bs in zip(logits, *branches)]
        anchors = model.anchor_generator(features)
        expected = model.inference_single_image(
            anchors[1:], scores[1:], [d[0] for d in deltas[1:]], images.image_sizes[0])
    assert len(det) > 0 and torch.isfinite(det.pred_boxes.tensor).all()
    torch.testing.assert_close(det.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=0)
    torch.testing.assert_close(det.scores, expected.scores, rtol=0, atol=0)
