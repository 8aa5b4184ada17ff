"""Deployment: EFL (and stock) one-stage detectors as TorchScript or ONNX files that take
one image and return its final detections; the contract is in :mod:`.adapter`."""

from .adapter import ExportError, check_exportable, detections, inference_model
from .formats import FORMATS, check_format, eager, export_detector, load_exported
from .loading import build_inference_model, load_weights, quiet_inference_logs
from .parity import Parity, compare_detections

__all__ = [
    "ExportError", "FORMATS", "Parity", "build_inference_model", "check_exportable",
    "check_format", "compare_detections", "detections", "eager", "export_detector",
    "inference_model", "load_exported", "load_weights", "quiet_inference_logs",
]
