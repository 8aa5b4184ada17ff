"""torchvision ResNet weights onto Detectron2's ResNet: the name map (as data) and a strict
conversion. The EFL authors' backbone uses torchvision's names too (but for its stem)."""

import re
from typing import Dict, List, Tuple

import torch
from torch import nn

from detectron2.modeling.backbone.resnet import BasicBlock, ResNet

from ..errors import CheckpointError

__all__ = [
    "TORCHVISION_STEM", "BLOCK_PARTS", "DROPPED", "rename_resnet", "looks_like_torchvision_resnet",
    "describe", "find_resnet", "model_layout", "source_layout", "torchvision_to_detectron2",
    "torchvision_to_detectron2_file",
]

# torchvision module name -> Detectron2 ResNet module name (tensor names follow unchanged:
# weight, bias, running_mean, running_var).
TORCHVISION_STEM = {"conv1": "stem.conv1", "bn1": "stem.conv1.norm"}
BLOCK_PARTS = {  # inside block layer{i}.{j} -> res{i+1}.{j}
    "conv1": "conv1", "bn1": "conv1.norm",
    "conv2": "conv2", "bn2": "conv2.norm",
    "conv3": "conv3", "bn3": "conv3.norm",
    "downsample.0": "shortcut", "downsample.1": "shortcut.norm",
}
# Deliberately not converted: the ImageNet classifier and BN's batch counters (the
# backbone's norms never update statistics).
DROPPED = (re.compile(r"^fc\.(weight|bias)$"), re.compile(r"\.num_batches_tracked$"))
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(conv[1-3]|bn[1-3]|downsample\.[01])\.(\w+)$")
_DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((3, 4, 6, 3), True): 50,
           ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152}


def rename_resnet(names, stem: Dict[str, str] = TORCHVISION_STEM) -> Tuple[Dict[str, str], List[str], List[str]]:
    """Map torchvision-style ResNet tensor names to Detectron2's.

    Returns:
        (mapping source -> Detectron2 name relative to the ResNet, dropped names, names
        that are neither).
    """
    mapping, dropped, unknown = {}, [], []
    for name in names:
        if any(p.search(name) for p in DROPPED):
            dropped.append(name)
            continue
        module, _, tensor = name.rpartition(".")
        block = _BLOCK.match(name)
        if module in stem:
            mapping[name] = f"{stem[module]}.{tensor}"
        elif block:
            stage, index, part, tensor = block.groups()
            mapping[name] = f"res{int(stage) + 1}.{index}.{BLOCK_PARTS[part]}.{tensor}"
        else:
            unknown.append(name)
    return mapping, dropped, unknown


def looks_like_torchvision_resnet(state: Dict[str, object]) -> bool:
    """True for a bare torchvision ResNet state dict (``conv1.weight``, ``layer1.*``)."""
    return "conv1.weight" in state and any(k.startswith("layer1.") for k in state)


def source_layout(names) -> Tuple[Tuple[int, ...], bool]:
    blocks = [0, 0, 0, 0]
    for name in names:
        m = _BLOCK.match(name)
        if m:
            stage, index = int(m.group(1)) - 1, int(m.group(2))
            blocks[stage] = max(blocks[stage], index + 1)
    return tuple(blocks), any(".conv3." in n for n in names)


def describe(layout: Tuple[Tuple[int, ...], bool]) -> str:
    """'ResNet-50 (3, 4, 6, 3 bottleneck blocks)' for a (blocks per stage, bottleneck) pair."""
    blocks, bottleneck = layout
    depth = _DEPTHS.get((blocks, bottleneck))
    kind = "bottleneck" if bottleneck else "basic"
    name = f"ResNet-{depth}" if depth else "a ResNet"
    return f"{name} ({', '.join(map(str, blocks))} {kind} blocks per stage)"


def model_layout(resnet: ResNet) -> Tuple[Tuple[int, ...], bool]:
    stages = [getattr(resnet, f"res{i}", None) for i in range(2, 6)]
    blocks = tuple(len(s) if s is not None else 0 for s in stages)
    bottleneck = not any(isinstance(b, BasicBlock) for s in stages if s is not None for b in s)
    return blocks, bottleneck


def find_resnet(model: nn.Module) -> Tuple[str, ResNet]:
    """(prefix with trailing dot, module) of the model's one Detectron2 ResNet."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, ResNet)]
    if len(found) != 1:
        raise CheckpointError(
            f"The checkpoint is a torchvision ResNet, which initialises a Detectron2 ResNet "
            f"backbone, but the model ({type(model).__name__}) has {len(found)} of them. Use a "
            "config whose backbone is detectron2.modeling.backbone.ResNet (possibly inside an "
            "FPN), or a Detectron2 checkpoint of this model."
        )
    name, module = found[0]
    return (name + "." if name else ""), module


def torchvision_to_detectron2(state: Dict[str, torch.Tensor], model: nn.Module,
                              source: str) -> Dict[str, torch.Tensor]:
    """A torchvision ResNet state dict (``resnet50-19c8e357.pth`` style) as a state dict for
    ``model``'s ResNet (keys with its full prefix, e.g. ``backbone.bottom_up.res2.0.conv1.weight``).

    Strict: every tensor of the model's ResNet is filled, every source tensor is used or
    deliberately dropped (``fc.*``, ``num_batches_tracked``), every shape equal; else
    :class:`CheckpointError` naming ``source``, what it holds and what the model needs.
    """
    prefix, resnet = find_resnet(model)
    theirs, ours = source_layout(state), model_layout(resnet)
    mapping, _, unknown = rename_resnet(state)
    target = resnet.state_dict()
    problems = []
    if theirs != ours:
        problems.append(f"it holds {describe(theirs)}, the model's backbone is {describe(ours)}")
    if unknown:
        problems.append("tensors that are not torchvision ResNet ones: " + ", ".join(unknown[:5]))
    missing = sorted(set(target) - set(mapping.values()))
    if missing and theirs == ours:
        problems.append("the model's " + ", ".join(missing[:5]) + " would stay uninitialised")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(target[v].shape)}"
             for k, v in mapping.items() if v in target and state[k].shape != target[v].shape]
    if wrong and theirs == ours:
        problems.append("shapes differ (e.g. another width): " + ", ".join(wrong[:3]))
    if problems:
        raise CheckpointError(
            f"train.init_checkpoint={source} looks like a torchvision ResNet checkpoint, but it "
            f"does not fit the model: {'; '.join(problems)}. Use torchvision's file for the "
            "model's depth (resnet50-19c8e357.pth for ResNet-50, resnet101-5d3b4d8f.pth for "
            "ResNet-101), or set model.backbone.bottom_up.stages.depth to the file's depth."
        )
    return {prefix + v: state[k] for k, v in mapping.items()}


def torchvision_to_detectron2_file(state: Dict[str, torch.Tensor], source: str) -> Dict:
    """A torchvision ResNet state dict as the content of a Detectron2 weights file for
    Detectron2's own ``DetectionCheckpointer`` (``MODEL.WEIGHTS`` with the stock
    ``DefaultTrainer``): Detectron2's ResNet names relative to the ResNet (``stem.conv1.*``,
    ``res2.0.conv1.norm.*``) as numpy arrays, marked for its name-matching heuristics (which
    find them under any prefix, e.g. ``backbone.bottom_up.``). Pickle it to a ``.pkl``.

    Raises:
        CheckpointError: ``state`` is not a torchvision ResNet (names neither mapped nor
            deliberately dropped, or no ``conv1`` / ``layer1``).
    """
    mapping, _, unknown = rename_resnet(state) if isinstance(state, dict) else ({}, [], [])
    if not isinstance(state, dict) or not looks_like_torchvision_resnet(state) or unknown:
        what = (f"tensors that are not torchvision ResNet ones: {', '.join(unknown[:5])}"
                if unknown else "no conv1.weight / layer1.* tensors")
        raise CheckpointError(
            f"{source} is not a torchvision ResNet state dict ({what}). Give torchvision's "
            "ImageNet file, e.g. resnet50-19c8e357.pth or resnet101-5d3b4d8f.pth (a bare state "
            "dict with conv1, bn1, layer1-4, fc)."
        )
    return {
        "model": {v: state[k].detach().cpu().numpy() for k, v in mapping.items()},
        "__author__": f"torchvision ({describe(source_layout(state))})",
        "matching_heuristics": True,
    }
