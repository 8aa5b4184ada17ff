"""What ``train.init_checkpoint`` may be besides a Detectron2 checkpoint: one entry point
(:func:`adapt_checkpoint`) that :class:`efl.checkpoint.EFLCheckpointer` calls on load."""

from typing import Dict

from torch import nn

from ..errors import CheckpointError
from .resnet import looks_like_torchvision_resnet, torchvision_to_detectron2
from .up_detector import looks_like_up

__all__ = ["adapt_checkpoint"]


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
