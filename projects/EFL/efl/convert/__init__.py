"""Other people's checkpoints onto this project's models: torchvision ResNet weights onto
Detectron2's ResNet (on load, through :func:`adapt_checkpoint`), and the EFL authors'
United-Perception detector onto :class:`ATSSRetinaNet` (tools/convert_up_checkpoint.py), their
YOLOX-IP onto :class:`YOLOXIP` (efl.convert.up_yolox, the same tool)."""

from .loading import UP_COPIES, adapt_checkpoint, read_checkpoint_file, up_weights
from .resnet import (
    looks_like_torchvision_resnet, rename_resnet, torchvision_to_detectron2,
    torchvision_to_detectron2_file,
)
from .up_detector import class_major_to_anchor_major, convert_up, looks_like_up, up_state_dict
from .up_yolox import convert_up_yolox, describe_up_yolox, looks_like_up_yolox, yolox_state_dict

__all__ = [
    "adapt_checkpoint", "read_checkpoint_file", "looks_like_torchvision_resnet", "rename_resnet",
    "torchvision_to_detectron2", "torchvision_to_detectron2_file", "class_major_to_anchor_major", "convert_up", "looks_like_up",
    "up_state_dict", "yolox_state_dict", "UP_COPIES", "up_weights", "convert_up_yolox",
    "describe_up_yolox", "looks_like_up_yolox",
]
