"""Write a detector as TorchScript (``model.ts``) or ONNX (``model.onnx``) and run the
written file again.

Both are traced on the CPU from one sample image (Detectron2's ``TracingAdapter``): the
image size, score threshold, top-k and NMS are recorded as graph operations, so the
files take any H and W. ONNX uses ``torch.onnx.export(dynamo=False)`` (the TorchScript-based
exporter) at opset 17: torchvision's ``nms`` becomes ``NonMaxSuppression``. The
dynamo-based exporter (the default since torch 2.9) stops in ``torch.export`` at the first
data-dependent shape (``Boxes.__init__``'s ``numel() == 0`` check after the score
threshold), so it is not used.
"""

import io
import os
import warnings
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..io import atomic_write
from .adapter import (Detections, ExportError, detections, inference_model, locate_failure,
                      tracing_adapter)

__all__ = ["FORMATS", "export_detector", "load_exported"]

FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}
ONNX_OPSET = 17
INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["boxes", "scores", "classes"]


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(
            f"Unknown export format {fmt!r}: choose one of {', '.join(FORMATS)} "
            "(--format torchscript writes model.ts, --format onnx writes model.onnx)."
        )
    return fmt


def export_detector(model: nn.Module, fmt: str, output_dir: str, sample_image: Tensor) -> str:
    """Export ``model`` (a supported detector, its weights loaded) to
    ``output_dir/model.{ts,onnx}``; returns the path. The file appears complete or not at
    all (written next to its name, then renamed).

    Args:
        sample_image: float32 (3, H, W) in the model's input format, used for tracing.
    Raises:
        ExportError: unknown format, or a part of the model that cannot be exported (named).
    """
    check_format(fmt)
    sample_image = sample_image.to(torch.float32).cpu()
    buffer = io.BytesIO()
    # Detectron2's traced code warns of Python values taken from tensors; the ones that
    # matter (image size, detection counts) stay dynamic (the parity tests vary them).
    with inference_model(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        adapter = tracing_adapter(model, sample_image)
        with locate_failure(model, fmt, adapter, sample_image):
            if fmt == "torchscript":
                torch.jit.save(torch.jit.trace(adapter, (sample_image,), check_trace=False), buffer)
            else:
                torch.onnx.export(
                    adapter, (sample_image,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                    input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                    dynamic_axes={"image": {1: "height", 2: "width"},
                                  **{name: {0: "detections"} for name in OUTPUT_NAMES}},
                )
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FORMATS[fmt])
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return path


def load_exported(path: str) -> Callable[[Tensor], Detections]:
    """A ``model.ts`` (TorchScript, on the CPU) or ``model.onnx`` (onnxruntime, CPU
    provider) as a function ``image (3, H, W) -> (boxes, scores, classes)`` of tensors."""
    if path.endswith(".onnx"):
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

        def run_onnx(image: Tensor) -> Detections:
            outputs = session.run(OUTPUT_NAMES, {"image": image.cpu().numpy().astype(np.float32)})
            return tuple(torch.from_numpy(o) for o in outputs)

        return run_onnx
    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export
        warnings.filterwarnings("ignore", message=".*is deprecated", category=FutureWarning)
        module = torch.jit.load(path, map_location="cpu")

    def run_torchscript(image: Tensor) -> Detections:
        with torch.no_grad():
            return tuple(module(image.cpu()))

    return run_torchscript


def eager(model: nn.Module) -> Callable[[Tensor], Detections]:
    """The reference the exported files are compared with: ``model``'s own inference on
    the CPU, without its loss modules, as the same function of one image."""

    def run(image: Tensor) -> Detections:
        with inference_model(model), torch.no_grad():
            return detections(model, image.cpu())

    return run
