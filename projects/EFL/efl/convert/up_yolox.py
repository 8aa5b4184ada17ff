"""The EFL authors' YOLOX-IP state dicts (United-Perception 52aaeb9: ``CSPDarknet``,
``YoloxPAFPN``, ``YoloXHead``, ``retina_post_iou``) as :class:`efl.modeling.YOLOXIP` ones:
the name map as data, the classification output's class-major -> anchor-major reorder, and
the strict conversion of their released files (tools/convert_up_checkpoint.py): size, class
and anchor count checked, every tensor used or named as dropped. tests/test_yolox_parity.py
checks it on their modules."""

import re
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..errors import CheckpointError
from .up_detector import check_complete, class_major_to_anchor_major, looks_like_up

__all__ = ["YOLOX_PREFIXES", "YOLOX_PARTS", "YOLOX_CLASS_MAJOR", "yolox_name", "yolox_state_dict",
           "looks_like_up_yolox", "describe_up_yolox", "convert_up_yolox"]

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


_STEM = "backbone.bottom_up.stem.conv.conv.weight"  # (c, 12, 3, 3), c = int(64 x width)
_BLOCKS = re.compile(r"^backbone\.bottom_up\.dark2\.1\.blocks\.(\d+)\.")  # d of them
_THEIR_CLS, _THEIR_IOU = "roi_head.cls_preds.0.weight", "roi_head.obj_preds.0.weight"


def looks_like_up_yolox(state: Dict[str, object]) -> bool:
    """True for a state dict of their YOLOX-IP (``roi_head.cls_preds.*``, ``module.`` removed)."""
    return any(k.startswith(("roi_head.cls_preds.", "backbone.stem.conv_block.")) for k in state)


def _layout(ours: Dict[str, torch.Tensor]) -> Tuple[Optional[int], int]:
    """(stem channels, bottlenecks in dark2) of a state dict under our names."""
    stem = ours.get(_STEM)
    return (None if stem is None else stem.shape[0],
            len({m.group(1) for m in map(_BLOCKS.match, ours) if m}))


def _describe(layout: Tuple[Optional[int], int]) -> str:
    from ..modeling.yolox import YOLOX_SIZES

    known = {(int(64 * w), max(round(3 * d), 1)): (name, d, w) for name, (d, w) in YOLOX_SIZES.items()}
    c, n = layout
    if layout in known:
        name, d, w = known[layout]
        return f"YOLOX-IP-{name.upper()} (depth {d}, width {w})"
    sizes = ", ".join(f"{k.upper()} {int(64 * w)} / {max(round(3 * d), 1)}"
                      for k, (d, w) in YOLOX_SIZES.items())
    return (f"a CSPDarknet of no YOLOX-IP size (stem {c} channels / {n} bottlenecks in dark2; "
            f"{sizes})")


def describe_up_yolox(state: Dict[str, torch.Tensor]) -> str:
    """Their YOLOX-IP's size in words, from its tensors (their names)."""
    return _describe(_layout({yolox_name(k) or k: v for k, v in state.items()}))


def convert_up_yolox(state: Dict[str, torch.Tensor], model: nn.Module, source: str,
                     config: str = "the config"):
    """Their YOLOX-IP state dict (``module.`` removed) as ``model``'s (:class:`YOLOXIP`
    built from ``config``, named in errors), checked strictly.

    Returns:
        (state dict with exactly ``model``'s names and shapes, notes: lines saying what was
        reordered, dropped or left at its initial value).
    Raises:
        CheckpointError: one paragraph on a file of another detector or size, another class
        or anchor count, a tensor neither used nor deliberately dropped, or a model tensor
        left unfilled.
    """
    target = model.state_dict()
    ours_desc = _describe(_layout(target))
    if not looks_like_up_yolox(state):
        what = ("their improved detector (ResNet-FPN, RetinaHeadWithIOU)" if looks_like_up(state)
                else "another model")
        raise CheckpointError(
            f"{source} is a checkpoint of {what}, not of their YOLOX-IP, which {config} builds "
            f"({type(model).__name__}, {ours_desc}). Give --config-file the config of that "
            "detector (configs/LVISv1/efl_improved_R_50_FPN_24ep.py or _R_101_).")
    anchors = model.head.num_anchors
    problems = []
    renamed, unknown = yolox_state_dict(state, anchors)
    theirs_desc = _describe(_layout(renamed))
    if theirs_desc != ours_desc:
        problems.append(f"it is {theirs_desc}, the config's model is {ours_desc} "
                        "(set_yolox_size in configs/common/models/yolox_ip.py)")
    if _THEIR_CLS in state and _THEIR_IOU in state:
        their_anchors = state[_THEIR_IOU].shape[0]
        their_classes = state[_THEIR_CLS].shape[0] // their_anchors
        if their_anchors != anchors:
            problems.append(f"it has {their_anchors} anchors per location, the config {anchors} "
                            "(model.head.num_anchors)")
        elif their_classes != model.num_classes:
            problems.append(f"it has {their_classes} classes (their num_classes "
                            f"{their_classes + 1}, with background), the config "
                            f"{model.num_classes} (model.num_classes)")
    if problems:
        raise CheckpointError(f"{source} does not fit the model of {config}: "
                              f"{'; '.join(problems)}. Use the config of the same size and class "
                              "count (configs/LVISv1/{efl,eqfl}_yolox_ip_{s,m}_300e.py).")

    out, notes = {}, [f"reordered the {sum(1 for k in state if YOLOX_CLASS_MAJOR.match(k))} "
                      "classification output tensors from their class-major channels (c x A + a) "
                      "to anchor-major (a x K + c)"]
    efl = [k for k in renamed if k.startswith("cls_loss.")]
    if efl and not any(k.startswith("cls_loss.") for k in target):
        notes.append(f"dropped post_process.cls_loss.{{{', '.join(k[9:] for k in efl)}}}: the "
                     "config's model has no EFL state (focal-loss config)")
        renamed = {k: v for k, v in renamed.items() if k not in efl}
    elif efl:
        notes.append("EFL state taken as accumulated by their gradient collector, which mixes "
                     "classes with 2 anchors (model.efl_statistics='authors' continues it the "
                     "same way; docs/authors-detector.md)")
    for name, tensor in renamed.items():
        if name not in target:
            unknown.append(name)
        elif tensor.shape != target[name].shape:
            unknown.append(f"{name} {tuple(tensor.shape)} vs {tuple(target[name].shape)}")
        else:
            out[name] = tensor.detach().clone().to(target[name].dtype)
    check_complete(source, config, target, out, unknown, notes)
    return out, notes
