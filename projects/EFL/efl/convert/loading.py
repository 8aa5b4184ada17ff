"""What ``train.init_checkpoint`` may be besides a Detectron2 checkpoint: one entry point
(:func:`adapt_checkpoint`) that :class:`efl.checkpoint.EFLCheckpointer` calls on load; and
how the conversion tools read their ``--input``: the torch file, and which copy of the
weights in one of the EFL authors' files (their saver, ``up/utils/general/saver_helper.py``:
``{'model': trained, 'ema': {'ema_state_dict': EMA, ...}, 'optimizer', ...}``)."""

import os
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..errors import CheckpointError
from .resnet import looks_like_torchvision_resnet, torchvision_to_detectron2
from .up_detector import looks_like_up, up_state_dict

__all__ = ["adapt_checkpoint", "read_checkpoint_file", "up_weights", "UP_COPIES"]

UP_COPIES = ("ema", "model")  # --copy: which weights of their file (EMA first if present)


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
            f"--input {source} --output converted.pth --config-file <this config>, then use "
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


def up_weights(checkpoint: object, source: str, copy: str = "ema") -> Tuple[Dict, List[str]]:
    """The state dict to convert from one of the authors' files (``module.`` removed) and a
    note on the copy taken. Their saver writes the trained weights under ``'model'`` (with
    DDP's ``module.``) and, when the run had ``ema: enable``, their EMA under
    ``'ema' -> 'ema_state_dict'``, the copy their evaluation uses (``BaseRunner.
    forward_model``, ``up/apis/inference.py``). ``copy``: "ema" (the EMA when present, else
    the trained weights) or "model" (the trained weights)."""
    if copy not in UP_COPIES:
        raise CheckpointError(f"--copy {copy!r}: expected one of {', '.join(UP_COPIES)}.")
    ema = checkpoint.get("ema") if isinstance(checkpoint, dict) else None
    ema_state = ema.get("ema_state_dict") if isinstance(ema, dict) else None
    if not isinstance(ema_state, dict):
        return up_state_dict(checkpoint, source), []
    trained = checkpoint.get("model", checkpoint.get("state_dict"))
    if copy == "ema" or not isinstance(trained, dict):
        if copy == "model":
            raise CheckpointError(f"--copy model: {source} holds only their EMA weights "
                                  "('ema' -> 'ema_state_dict'), no 'model'; use --copy ema.")
        state = up_state_dict({"model": ema_state}, source)
        if not isinstance(trained, dict):
            return state, [f"converted their EMA weights ('ema' -> 'ema_state_dict', {len(state)} "
                           "tensors); the file holds no trained copy"]
        return state, [f"the file holds two copies of the weights: converted their EMA "
                       f"('ema' -> 'ema_state_dict', {len(state)} tensors; every float tensor "
                       "averaged, BN statistics and EFL state included), which their evaluation "
                       f"uses; dropped the trained copy ('model', {len(trained)} tensors; "
                       "--copy model converts that one)"]
    state = up_state_dict(checkpoint, source)
    return state, [f"the file holds two copies of the weights: converted the trained one "
                   f"('model', {len(state)} tensors, --copy model); dropped their EMA ('ema' -> "
                   f"'ema_state_dict', {len(ema_state)} tensors), which their evaluation uses"]
