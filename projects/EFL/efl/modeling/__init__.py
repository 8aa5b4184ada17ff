"""EFL meta-architectures (registered in Detectron2's META_ARCH_REGISTRY on import)."""

from .fcos import EFLFCOS
from .retinanet import EFLRetinaNet

__all__ = ["EFLRetinaNet", "EFLFCOS"]
