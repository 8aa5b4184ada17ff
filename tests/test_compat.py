"""The Detectron2 the set-up installed: native ops on the official build, and the v0.6
workarounds of efl.compat active on the fallback only."""

import os
import sys

import pytest
import torch
from detectron2.modeling.meta_arch.fcos import FCOS as D2FCOS
from detectron2.structures import Boxes

from efl import compat

official_only = pytest.mark.skipif(
    compat.LEGACY_D2, reason="Detectron2 v0.6 fallback (PyPI pb1-detectron2): its native ops "
    "are not built, and the v0.6 workarounds are meant to be active")
fallback_only = pytest.mark.skipif(not compat.LEGACY_D2, reason="official Detectron2 main: the "
                                   "v0.6 workarounds are off")


def test_gate_agrees_with_what_the_set_up_installed():
    record = os.path.join(sys.prefix, ".efl-detectron2-installed")
    if not os.path.isfile(record):
        pytest.skip(f"no set-up record at {record} (Detectron2 not installed by scripts/setup_env.sh)")
    with open(record) as f:
        installed = f.read()
    assert compat.LEGACY_D2 == ("FALLBACK" in installed), installed
    assert compat.HAS_NATIVE_OPS == (not compat.LEGACY_D2), installed


@official_only
def test_native_rotated_box_ops_run():
    from detectron2.layers import nms_rotated
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated

    # (cx, cy, w, h, angle in degrees): an 8x4 box, the same turned by 90 degrees about its
    # centre (overlap 4x4 = 16, union 32 + 32 - 16 = 48), and one far away.
    boxes = torch.tensor([[10.0, 10.0, 8.0, 4.0, 0.0], [10.0, 10.0, 8.0, 4.0, 90.0],
                          [50.0, 50.0, 8.0, 4.0, 30.0]])
    iou = pairwise_iou_rotated(RotatedBoxes(boxes), RotatedBoxes(boxes))
    assert iou[0, 0].item() == pytest.approx(1.0, abs=1e-5)
    assert iou[0, 1].item() == pytest.approx(16 / 48, abs=1e-4)
    assert iou[0, 2].item() == 0.0
    keep = nms_rotated(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.3)
    assert keep.tolist() == [0, 2]  # IoU 1/3 > 0.3 suppresses the turned box
    assert nms_rotated(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 1, 2]


@official_only
def test_on_main_compat_is_detectron2_itself():
    assert compat.FCOS is D2FCOS
    assert compat.head_norm("GN") == "GN"
    boxes = [torch.zeros(3, 4)]
    assert compat.matched_box_tensors(boxes) is boxes


@fallback_only
def test_on_v06_the_workarounds_mirror_main():
    norm = compat.head_norm("GN")
    assert norm(1).num_groups == 1 and norm(256).num_groups == 32  # v0.6 probes norm(1)
    model = compat.FCOS.__new__(compat.FCOS)  # label_anchors needs only num_classes
    model.num_classes = 5
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 16.0, 16.0]]))]
    from detectron2.structures import Instances

    empty = Instances((16, 16), gt_boxes=Boxes(torch.zeros(0, 4)),
                      gt_classes=torch.zeros(0, dtype=torch.long))
    labels, boxes = compat.FCOS.label_anchors(model, anchors, [empty])
    assert labels[0].tolist() == [5, 5]  # every anchor background, as on main
    assert compat.matched_box_tensors(boxes)[0].shape == (2, 4)


@fallback_only
def test_on_v06_export_says_it_needs_official_detectron2():
    from efl.export import ExportError
    from efl.export.adapter import tracing_adapter

    with pytest.raises(ExportError, match="Export needs official Detectron2 main"):
        tracing_adapter(torch.nn.Linear(2, 2), torch.zeros(3, 8, 8))


def test_group_norm_heads_get_32_groups():
    """Both Detectron2s build the ATSS head's GroupNorm with 32 groups."""
    from detectron2.layers import ShapeSpec

    from efl.modeling import ATSSHead

    head = ATSSHead(input_shape=[ShapeSpec(channels=64)] * 2, num_classes=3, num_anchors=2,
                    conv_dims=[64, 64])
    norms = [m for m in head.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 4 and all(m.num_groups == 32 for m in norms)
