"""Equalized Focal Loss for Detectron2 one-stage detectors (Li et al., CVPR 2022)."""

from .losses import EqualizedFocalLoss

__version__ = "0.1.0"

__all__ = ["EqualizedFocalLoss"]
