"""The EFL authors' detector checkpoints (United-Perception, ``RetinaHeadWithIOU`` on a
ResNet-FPN) as :class:`ATSSRetinaNet` state dicts: the name map (as data), the cls
predictor's class-major -> anchor-major reorder, the zero biases our head convs need, and
strict name and shape checks (Detectron2's checkpointer only warns on a shape mismatch)."""

import re
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..errors import CheckpointError
from .resnet import describe, find_resnet, model_layout, rename_resnet, source_layout

__all__ = ["UP_STEM", "UP_NAMES", "looks_like_up", "up_state_dict", "class_major_to_anchor_major",
           "convert_up"]

UP_STEM = {"layer0.0": "stem.conv1", "layer0.1": "stem.conv1.norm"}  # their backbone.layer0
# Their module name (after "neck." / "roi_head." / "post_process.") -> ours (regex groups kept).
UP_NAMES = [
    (r"^neck\.c([3-5])_lateral\.", r"backbone.fpn_lateral\1."),
    (r"^neck\.p([3-5])_conv\.", r"backbone.fpn_output\1."),
    (r"^neck\.p([67])_conv\.", r"backbone.top_block.p\1."),
    (r"^roi_head\.cls_subnet\.(\d+)\.", r"head.cls_subnet.\1."),
    (r"^roi_head\.box_subnet\.(\d+)\.", r"head.bbox_subnet.\1."),
    (r"^roi_head\.cls_subnet_pred\.", r"head.cls_score."),  # + class-major -> anchor-major
    (r"^roi_head\.box_subnet_pred\.", r"head.bbox_pred."),  # a * 4 + j on both sides
    (r"^roi_head\.iou_pred\.", r"head.iou_pred."),
    (r"^post_process\.cls_loss\.(pos_grad|neg_grad|pos_neg)$", r"cls_loss.\1"),  # EFL state
]
CLASS_MAJOR = ("roi_head.cls_subnet_pred.weight", "roi_head.cls_subnet_pred.bias")
_TOWER_CONV_BIAS = re.compile(r"^head\.(cls|bbox)_subnet\.\d+\.bias$")  # theirs have none


def looks_like_up(state: Dict[str, object]) -> bool:
    """True for a state dict of their detector (``backbone.layer0.*`` / ``roi_head.*``)."""
    return any(re.match(r"^(module\.)?(backbone\.layer0\.|roi_head\.)", k) for k in state)


def up_state_dict(checkpoint: object, source: str) -> Dict[str, torch.Tensor]:
    """The state dict inside one of their checkpoint files (``{'model': ...}``,
    ``{'state_dict': ...}`` or bare), ``module.`` prefixes removed."""
    state = checkpoint
    if isinstance(checkpoint, dict):
        for key in ("model", "state_dict"):
            if isinstance(checkpoint.get(key), dict):
                state = checkpoint[key]
                break
    if not isinstance(state, dict) or not looks_like_up(state):
        raise CheckpointError(
            f"{source} is not a checkpoint of the EFL authors' detectors: expected a dict with "
            "'model' or 'state_dict' (or a bare state dict) holding their names, optionally with "
            "'module.': backbone.layer0.0.weight, roi_head.cls_subnet_pred.weight as their "
            "efl_improved_baseline_r50.pth / _r101.pth, or backbone.stem.conv_block.conv.weight, "
            "roi_head.cls_preds.0.weight as their YOLOX-IP files (efl_yolox_small.pth, ...)."
        )
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def class_major_to_anchor_major(t: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """Output channels c * A + a (theirs) -> a * K + c (Detectron2's); any trailing dims."""
    k = t.shape[0] // num_anchors
    return t.reshape(k, num_anchors, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _rename(names) -> Tuple[Dict[str, str], List[str], List[str]]:
    """Their backbone names -> (mapping to our names relative to the ResNet, dropped, unknown)."""
    backbone = [n[len("backbone."):] for n in names if n.startswith("backbone.")]
    mapping, dropped, unknown = rename_resnet(backbone, stem=UP_STEM)
    mapping = {f"backbone.{k}": v for k, v in mapping.items()}
    dropped = [f"backbone.{k}" for k in dropped]
    unknown = [f"backbone.{k}" for k in unknown]
    return mapping, dropped, unknown


def convert_up(state: Dict[str, torch.Tensor], model: nn.Module, source: str,
               config: str = "the config"):
    """Their state dict (from :func:`up_state_dict`) as ``model``'s (:class:`ATSSRetinaNet`
    built from ``config``, named in errors), checked strictly.

    Returns:
        (state dict with exactly ``model``'s names and shapes, notes: list of lines saying
        what was dropped or filled and why).
    Raises:
        CheckpointError: one paragraph on another depth, class count, anchor count, a
        tensor neither used nor deliberately dropped, or a model tensor left unfilled.
    """
    from .up_yolox import describe_up_yolox, looks_like_up_yolox

    if looks_like_up_yolox(state):
        raise CheckpointError(
            f"{source} is a checkpoint of the authors' YOLOX-IP, {describe_up_yolox(state)}, "
            f"not of their improved detector (ResNet-FPN), which {config} builds "
            f"({type(model).__name__}). Give --config-file the YOLOX-IP config of its size and "
            "loss (configs/LVISv1/{efl,eqfl}_yolox_ip_{s,m}_300e.py).")
    target = model.state_dict()
    resnet_prefix, resnet = find_resnet(model)
    backbone_map, dropped, unknown = _rename(state)
    mapping = {k: resnet_prefix + v for k, v in backbone_map.items()}
    for name in state:
        if name.startswith("backbone."):
            continue
        for pattern, repl in UP_NAMES:
            if re.match(pattern, name):
                mapping[name] = re.sub(pattern, repl, name)
                break
        else:
            unknown.append(name)

    problems = []
    theirs = source_layout([k[len("backbone."):] for k in state if k.startswith("backbone.")])
    ours = model_layout(resnet)
    if theirs != ours:
        problems.append(f"its backbone is {describe(theirs)}, the config's is {describe(ours)} "
                        "(model.backbone.bottom_up.stages.depth)")
    num_anchors = model.head.iou_pred.out_channels if hasattr(model, "head") else 0
    if CLASS_MAJOR[0] in state and "roi_head.iou_pred.weight" in state:
        their_anchors = state["roi_head.iou_pred.weight"].shape[0]
        their_classes = state[CLASS_MAJOR[0]].shape[0] // their_anchors
        if their_anchors != num_anchors:
            problems.append(f"it has {their_anchors} anchors per location, the config "
                            f"{num_anchors} (model.head.num_anchors)")
        elif their_classes != model.num_classes:
            problems.append(f"it has {their_classes} classes (their num_classes "
                            f"{their_classes + 1}, with background), the config "
                            f"{model.num_classes} (model.num_classes)")
    if problems:
        raise CheckpointError(f"{source} does not fit the model of {config}: {'; '.join(problems)}. "
                              "Use the config of the same depth and class count "
                              "(configs/LVISv1/efl_improved_R_50_FPN_24ep.py or _R_101_).")

    out, notes = {}, []
    if dropped:
        notes.append(f"dropped {len(dropped)} BN batch counters (num_batches_tracked): our "
                     "backbone norms never update statistics")
    efl_dropped = [n for n, t in mapping.items() if t.startswith("cls_loss.") and t not in target]
    for name in efl_dropped:
        del mapping[name]
    if efl_dropped:
        notes.append(f"dropped {', '.join(efl_dropped)}: the config's model has no EFL "
                     "(focal-loss config)")
    for name, new in mapping.items():
        tensor = state[name]
        if name in CLASS_MAJOR:
            tensor = class_major_to_anchor_major(tensor, num_anchors)
        if new not in target:
            unknown.append(f"{name} (-> {new})")
        elif tensor.shape != target[new].shape:
            unknown.append(f"{name} {tuple(tensor.shape)} vs our {new} {tuple(target[new].shape)}")
        else:
            out[new] = tensor.detach().clone().to(target[new].dtype)
    zero_bias = [k for k in target if k not in out and _TOWER_CONV_BIAS.match(k)]
    for k in zero_bias:
        out[k] = torch.zeros_like(target[k])
    if zero_bias:
        notes.append(f"filled {len(zero_bias)} head tower conv biases with 0 (their tower convs "
                     "have no bias)")
    check_complete(source, config, target, out, unknown, notes,
                   "(efl_improved_baseline_r50/r101 with "
                   "configs/LVISv1/efl_improved_R_50/101_FPN_24ep.py)")
    return out, notes


def check_complete(source: str, config: str, target: Dict[str, torch.Tensor],
                   out: Dict[str, torch.Tensor], unknown: List[str], notes: List[str],
                   hint: str = "") -> None:
    """A conversion is exact: every source tensor placed (``unknown`` lists the others) and
    every model tensor filled, the EFL state excepted (a focal-loss source: said in
    ``notes``); else one CheckpointError naming both sides and ``hint``."""
    missing = [k for k in target if k not in out]
    if missing and all(k.startswith("cls_loss.") for k in missing):
        notes.append("no EFL state in the source (a focal-loss checkpoint): EFL starts from "
                     "g = 1 for every class")
        missing = []
    if unknown or missing:
        raise CheckpointError(
            f"{source} does not convert exactly onto the model of {config}: "
            + (f"tensors with no place in the model: {', '.join(unknown[:5])}"
               + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "") if unknown else "")
            + ("; " if unknown and missing else "")
            + (f"model tensors it does not fill: {', '.join(missing[:5])}" if missing else "")
            + ". Check that the file and the config describe the same detector"
            + (f" {hint}." if hint else "."))
