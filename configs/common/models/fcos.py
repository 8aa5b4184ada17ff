"""Detectron2's FCOS R-50-FPN (as in its configs/common/models/fcos.py), on the
RetinaNet backbone. On Detectron2 v0.6, efl.compat supplies main's fixes (GroupNorm,
empty images); on main, FCOS is Detectron2's own class."""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.fcos import FCOSHead

from efl.compat import FCOS, head_norm

from .retinanet import model

model._target_ = FCOS
del model.anchor_generator
del model.box2box_transform
del model.anchor_matcher
del model.input_format
model.head = L(FCOSHead)(
    input_shape=[ShapeSpec(channels=256)] * 5,
    num_classes="${..num_classes}",
    conv_dims=[256, 256, 256, 256],
    prior_prob=0.01,
    norm=head_norm("GN"),
)
model.test_score_thresh = 0.2
model.test_topk_candidates = 1000
model.test_nms_thresh = 0.6
