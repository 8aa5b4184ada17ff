"""The EFL authors' YOLOX-IP state dicts (United-Perception 52aaeb9: ``CSPDarknet``,
``YoloxPAFPN``, ``YoloXHead``, ``retina_post_iou``) as :class:`efl.modeling.YOLOXIP` ones:
the name map as data and the classification output's class-major -> anchor-major reorder.
tests/test_yolox_parity.py checks it on their modules; tools/convert_up_checkpoint.py is to
use it for their released files (issue 26, point 3)."""

import re
from typing import Dict, List, Optional, Tuple

import torch

from .up_detector import class_major_to_anchor_major

__all__ = ["YOLOX_PREFIXES", "YOLOX_PARTS", "YOLOX_CLASS_MAJOR", "yolox_name", "yolox_state_dict"]

# Their top-level module (and neck / head part) -> ours; the first match applies.
YOLOX_PREFIXES = [
    (r"^backbone\.", r"backbone.bottom_up."),
    (r"^neck\.lateral_conv0\.", r"backbone.reduce5."),
    (r"^neck\.C3_p4\.", r"backbone.fuse4."),
    (r"^neck\.reduce_conv1\.", r"backbone.reduce4."),
    (r"^neck\.C3_p3\.", r"backbone.out3."),
    (r"^neck\.bu_conv2\.", r"backbone.down3."),
    (r"^neck\.C3_n3\.", r"backbone.out4."),
    (r"^neck\.bu_conv1\.", r"backbone.down4."),
    (r"^neck\.C3_n4\.", r"backbone.out5."),
    (r"^roi_head\.(stems|cls_convs|reg_convs)\.", r"head.\1."),
    (r"^roi_head\.cls_preds\.", r"head.cls_score."),  # + class-major -> anchor-major
    (r"^roi_head\.reg_preds\.", r"head.bbox_pred."),  # a * 4 + j on both sides
    (r"^roi_head\.obj_preds\.", r"head.iou_pred."),  # their IoU branch
    (r"^post_process\.cls_loss\.(pos_grad|neg_grad|pos_neg)$", r"cls_loss.\1"),  # EFL state
]
# Names inside the blocks (applied after the prefix, all that match).
YOLOX_PARTS = [
    (r"\.bn1\.", ".norm."),  # ConvBnAct: conv, bn1, act1 -> conv, norm, act
    (r"\.stem\.conv_block\.", ".stem.conv."),  # Focus
    (r"\.conv_block([12])\.", r".conv\1."),  # SPP
    (r"\.m\.(\d+)\.", r".blocks.\1."),  # CSPLayer's bottlenecks
]
YOLOX_CLASS_MAJOR = re.compile(r"^roi_head\.cls_preds\.\d+\.(weight|bias)$")


def yolox_name(name: str) -> Optional[str]:
    """Our name for their ``name`` (without ``module.``); None if it has no place."""
    for pattern, repl in YOLOX_PREFIXES:
        if re.match(pattern, name):
            name = re.sub(pattern, repl, name)
            break
    else:
        return None
    for pattern, repl in YOLOX_PARTS:
        name = re.sub(pattern, repl, name)
    return name


def yolox_state_dict(state: Dict[str, torch.Tensor],
                     num_anchors: int) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Their state dict under our names, the classification outputs reordered for
    ``num_anchors`` anchors per location.

    Returns:
        (renamed state dict, their names with no place in ours).
    """
    out, unknown = {}, []
    for name, tensor in state.items():
        new = yolox_name(name)
        if new is None:
            unknown.append(name)
            continue
        if YOLOX_CLASS_MAJOR.match(name):
            tensor = class_major_to_anchor_major(tensor, num_anchors)
        out[new] = tensor
    return out, unknown
