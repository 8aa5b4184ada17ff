"""What ``train.init_checkpoint`` may be besides a Detectron2 checkpoint: one entry point
(:func:`adapt_checkpoint`) that :class:`efl.checkpoint.EFLCheckpointer` calls on load; and
how the conversion tools read their ``--input``."""

import os
from typing import Dict

import torch
from torch import nn

from ..errors import CheckpointError
from .resnet import looks_like_torchvision_resnet, torchvision_to_detectron2
from .up_detector import looks_like_up

__all__ = ["adapt_checkpoint", "read_checkpoint_file"]


def adapt_checkpoint(checkpoint: Dict, model: nn.Module, source: str) -> Dict:
    """``checkpoint`` (as Detectron2's checkpointer read it: ``{"model": state, ...}``) ready
    for ``model``: a torchvision ResNet state dict is mapped onto the model's ResNet backbone;
    a checkpoint of the authors' United-Perception code is refused (it must be converted
    first); anything else is returned unchanged."""
    state = checkpoint.get("model")
    if not isinstance(state, dict):
        return checkpoint
    if looks_like_torchvision_resnet(state):
        return {"model": torchvision_to_detectron2(state, model, source),
                "__author__": "torchvision", "matching_heuristics": False}
    if looks_like_up(state) or looks_like_up(state.get("state_dict") or {}):
        raise CheckpointError(
            f"train.init_checkpoint={source} is a checkpoint of the EFL authors' "
            "United-Perception code (backbone.layer0.*, neck.*, roi_head.* names), which this "
            "model cannot load as it is. Convert it once: python tools/convert_up_checkpoint.py "
            f"--input {source} --output converted.pth, then use "
            "train.init_checkpoint=converted.pth."
        )
    return checkpoint


def read_checkpoint_file(path: str, allow_pickle: bool = False):
    """The object in the torch file ``path`` (a conversion tool's ``--input``), tensors only
    unless ``allow_pickle``; :class:`CheckpointError` saying what to do otherwise."""
    if not os.path.isfile(path):
        raise CheckpointError(f"--input {path}: file not found. Give the path of the checkpoint "
                              "to convert.")
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        hint = ("" if allow_pickle else " If the file is a complete checkpoint that also holds "
                "Python objects (optimizer, scheduler) and you trust it, add --allow-pickle.")
        raise CheckpointError(f"--input {path} cannot be read as a torch checkpoint: "
                              f"{type(e).__name__}: {first}.{hint}") from None
