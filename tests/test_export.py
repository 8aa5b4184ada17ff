"""efl.export: exported TorchScript / ONNX detectors give the eager model's detections
(after a short training run, on the tiny validation images and at other sizes), carry no
loss state, and bad input (format, unexportable part) is named with nothing left behind."""

import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image

from deploy_models import ARCHS, one_thread, tiny_deploy_config, trained
from efl import compat
from efl.export import (FORMATS, ExportError, check_exportable, compare_detections, eager,
                        export_detector, load_exported)


pytestmark = pytest.mark.skipif(compat.TracingAdapter is None, reason="Detectron2 v0.6 "
                                "fallback: its detectron2.export needs caffe2 (see efl.compat)")

def validation_images(prefix):
    """The tiny validation images (12, 96x96, BGR 0-255) and two of other sizes: the
    exported graphs must not have kept the tracing image's size."""
    images = [torch.as_tensor(np.ascontiguousarray(read_image(d["file_name"], "BGR")
                                                   .transpose(2, 0, 1))).float()
              for d in DatasetCatalog.get(f"{prefix}_val")]
    padded = torch.zeros(3, 113, 131)  # neither a multiple of the backbone's 32
    padded[:, 7:103, 19:115] = images[1]
    return images + [images[0][:, :77, 5:], padded]


@pytest.fixture(scope="module", params=ARCHS)
def model(request, tiny_dataset, tmp_path_factory):
    root = str(tmp_path_factory.getbasetemp() / "deploy_models")
    with one_thread():
        yield trained(request.param, tiny_dataset, root)[1]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_exported_detections_equal_eager(model, fmt, tiny_dataset, tmp_path):
    images = validation_images(tiny_dataset)
    path = export_detector(model, fmt, str(tmp_path), images[0])
    assert os.listdir(tmp_path) == [FORMATS[fmt]]
    reference, exported = eager(model), load_exported(path)
    worst_score = worst_box = 0.0
    top_scores = []
    for i, image in enumerate(images):
        ref, out = reference(image), exported(image)
        assert out[0].dtype == torch.float32 and out[1].dtype == torch.float32
        assert out[2].dtype == torch.int64 and out[0].shape == (len(out[1]), 4)
        assert len(out[1]) <= model.max_detections_per_image
        if image.shape[1:] != images[0].shape[1:]:
            assert out[0][:, 2].max() <= image.shape[2] and out[0][:, 3].max() <= image.shape[1]
        parity = compare_detections(ref, out, max_detections=model.max_detections_per_image)
        assert parity.ok(score_tol=1e-4, box_tol=1e-2), f"image {i}: {parity}"
        assert parity.matched > 0
        worst_score = max(worst_score, parity.max_score_diff)
        worst_box = max(worst_box, parity.max_box_diff)
        top_scores.append(float(ref[1].max()))
    assert max(top_scores) > 0.05, "training did not lift any score above the prior"
    print(f"\n{type(model).__name__} {fmt}: {len(images)} images, max |score diff| "
          f"{worst_score:.2e}, max |box diff| {worst_box:.2e} px, top score {max(top_scores):.2f}")


def _random_model(arch, tiny_dataset, tmp_path):
    from detectron2.config import instantiate

    cfg = tiny_deploy_config(arch, tiny_dataset, str(tmp_path))
    if "class_groups" in cfg.model.get("cls_loss", {}):
        cfg.model.cls_loss.class_groups = None
    torch.manual_seed(0)
    return instantiate(cfg.model).eval()


def _op_types(graph):
    """Operator types of an ONNX graph and its subgraphs (If / Loop bodies)."""
    types = set()
    for node in graph.node:
        types.add(node.op_type)
        for attr in node.attribute:
            for sub in [attr.g] + list(attr.graphs):
                types |= _op_types(sub)
    return types


def test_exported_files_hold_no_loss_state(tiny_dataset, tmp_path):
    import onnx

    model = _random_model("efl_retinanet", tiny_dataset, tmp_path)
    image = torch.rand(3, 64, 64) * 255
    assert any(k.startswith("cls_loss.") for k in model.state_dict())
    with pytest.warns(FutureWarning):  # torch.jit is deprecated in favour of torch.export
        ts = torch.jit.load(export_detector(model, "torchscript", str(tmp_path / "ts"), image))
    assert ts.state_dict() and not any(".cls_loss." in k for k in ts.state_dict())
    graph = onnx.load(export_detector(model, "onnx", str(tmp_path / "onnx"), image)).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["boxes", "scores", "classes"]
    assert "NonMaxSuppression" in _op_types(graph)
    assert not any("cls_loss" in init.name for init in graph.initializer)
    assert isinstance(model.cls_loss, torch.nn.Module) and model.training is False  # restored


def test_unknown_format_and_unsupported_models_are_named(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="Unknown export format 'tflite'"):
        export_detector(torch.nn.Linear(2, 2), "tflite", str(out), torch.zeros(3, 8, 8))
    with pytest.raises(ExportError, match=r"model \(the config's model._target_, Linear\)"):
        check_exportable(torch.nn.Linear(2, 2))
    from detectron2.modeling.anchor_generator import RotatedAnchorGenerator

    model = _random_model("retinanet", tiny_dataset, tmp_path)
    model.anchor_generator = RotatedAnchorGenerator(
        sizes=[[16]], aspect_ratios=[[1.0]], angles=[[0]], strides=[8, 16, 32])
    with pytest.raises(ExportError, match=r"model.anchor_generator \(RotatedAnchorGenerator\)"):
        export_detector(model, "onnx", str(out), torch.zeros(3, 64, 64))
    assert not out.exists()


class _KthValueConv(torch.nn.Module):
    """A conv followed by an op that has no ONNX conversion (aten::kthvalue)."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        x = self.conv(x)
        return x - torch.kthvalue(x, 1, dim=1, keepdim=True)[0]


class _UntraceableConv(_KthValueConv):
    def forward(self, x):
        if torch.jit.is_tracing():
            raise NotImplementedError("data-dependent Python control flow")
        return self.conv(x)


def test_a_part_that_cannot_be_exported_is_named_and_nothing_is_written(tiny_dataset, tmp_path):
    model = _random_model("retinanet", tiny_dataset, tmp_path)
    model.head.cls_score = _KthValueConv(model.head.cls_score)
    out = tmp_path / "out"
    # Naming the part needs TorchScript's optimised executor, the default (conftest.py turns
    # it off for the session; with it off the part is not found: see the issue-18 report).
    with pytest.raises(ExportError, match="model.head.cls_score uses aten::kthvalue, which has no ONNX"), \
            torch.jit.optimized_execution(True):
        export_detector(model, "onnx", str(out), torch.zeros(3, 64, 64))
    model.head.cls_score = _UntraceableConv(model.head.cls_score.conv)
    for fmt in FORMATS:
        with pytest.raises(ExportError, match=r"model.head.cls_score \(_UntraceableConv\) failed"):
            export_detector(model, fmt, str(out), torch.zeros(3, 64, 64))
    assert not out.exists()


def test_parity_matches_sets_and_reports_differences():
    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 9, 9]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.5, 0.5])
    classes = torch.tensor([1, 2, 2])
    ref = (boxes, scores, classes)
    swapped = (boxes[[0, 2, 1]], scores[[0, 2, 1]], classes[[0, 2, 1]])  # tie reordered
    assert compare_detections(ref, swapped).ok()
    moved = (boxes + torch.tensor([0, 0, 0.5, 0]), scores + 2e-4, classes)
    parity = compare_detections(ref, moved)
    assert abs(parity.max_box_diff - 0.5) < 1e-6 and abs(parity.max_score_diff - 2e-4) < 1e-6
    assert not parity.ok() and parity.ok(score_tol=1e-3, box_tol=1.0)
    relabelled = (boxes, scores, torch.tensor([1, 2, 3]))
    parity = compare_detections(ref, relabelled)
    assert parity.unmatched_reference == 1 and parity.unmatched_other == 1 and not parity.ok()
    # Both cut at 3 detections: the last-ranked detection may differ (a tie at the cut).
    cut = (torch.cat([boxes[:2], boxes[:1] + 30]), scores, torch.tensor([1, 2, 0]))
    assert not compare_detections(ref, cut).ok()
    assert compare_detections(ref, cut, max_detections=3).ok()
