"""The function that is exported: one image in, the model's final detections out.

Contract (docs/deploy.md; outside checks rely on it):

- input ``image``: float32 (3, H, W), the model's input format (BGR, 0-255, as
  ``DatasetMapper`` gives it), any H and W;
- outputs, in this order: ``boxes`` float32 (N, 4) x1 y1 x2 y2 in input pixels,
  ``scores`` float32 (N,), ``classes`` int64 (N,) 0-based contiguous class ids;
  N <= the model's ``max_detections_per_image``.

The eager model's own inference path (preprocessing, backbone, head, anchors, decoding,
score threshold, top-k per level, class-wise NMS, ``detector_postprocess`` at scale 1) is
what gets traced, through Detectron2's ``TracingAdapter``; nothing is re-implemented.
"""

import contextlib
import re
from typing import Iterator, List, Tuple

import torch
from torch import Tensor, nn

from detectron2.modeling import RetinaNet
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

from ..compat import FCOS, TracingAdapter
from ..errors import InputError
from ..losses import statistics_losses

__all__ = ["ExportError", "Detections", "check_exportable", "inference_model", "detections",
           "tracing_adapter", "locate_failure"]

Detections = Tuple[Tensor, Tensor, Tensor]  # boxes (N, 4), scores (N,), classes (N,)

# RetinaNet covers EFLRetinaNet and ATSSRetinaNet (its cls x IoU scoring is in its own
# forward_inference, traced like the rest); FCOS covers EFLFCOS.
SUPPORTED = (RetinaNet, FCOS)
_NAMES = "RetinaNet, EFLRetinaNet, ATSSRetinaNet, FCOS and EFLFCOS"


class ExportError(InputError):
    """A model, part of a model or format that cannot be exported; the message names it."""


def check_exportable(model: nn.Module) -> None:
    """Raise :class:`ExportError` naming the part of ``model`` that export does not cover."""
    if not isinstance(model, SUPPORTED):
        raise ExportError(
            f"model (the config's model._target_, {type(model).__name__}) cannot be exported: "
            f"export covers the one-stage detectors {_NAMES}. Use a config whose model is one "
            "of these."
        )
    anchors = getattr(model, "anchor_generator", None)
    if anchors is not None and type(anchors) is not DefaultAnchorGenerator:
        raise ExportError(
            f"model.anchor_generator ({type(anchors).__name__}) cannot be exported: only "
            "Detectron2's DefaultAnchorGenerator (axis-aligned boxes) is traced with dynamic "
            "image sizes. Use DefaultAnchorGenerator in the config."
        )


@contextlib.contextmanager
def inference_model(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` prepared for inference and export, restored on exit: eval mode, on the
    CPU, without its loss modules with state (:func:`efl.losses.statistics_losses`: EFL, EQFL;
    training-only state).

    In place rather than on a copy: a model trained by ``efl.engine.Trainer`` cannot be
    deep-copied (``copy.deepcopy`` meets an open file object).
    """
    check_exportable(model)
    training = model.training
    device = next(iter(model.parameters()), torch.empty(0)).device
    detached = []
    for name, module in statistics_losses(model):
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent)
        detached.append((owner, attr, module))
        setattr(owner, attr, None)
    try:
        yield model.cpu().eval()
    finally:
        for owner, attr, module in detached:
            setattr(owner, attr, module)
        model.to(device).train(training)


def detections(model: nn.Module, image: Tensor) -> Detections:
    """The eager model on one (3, H, W) image -> (boxes, scores, classes) in input pixels."""
    instances = model([{"image": image}])[0]["instances"]
    return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


def tracing_adapter(model: nn.Module, sample_image: Tensor) -> nn.Module:
    """``TracingAdapter`` computing :func:`detections`: ``forward(image) -> Detections``."""
    if TracingAdapter is None:
        raise ExportError(
            "Export needs official Detectron2 main: the installed Detectron2 v0.6 fallback's "
            "detectron2.export imports caffe2, which current torch does not ship. Re-run the "
            "set-up with the official build (EFL_D2_SOURCE=<Detectron2 checkout or archive>, "
            "or Git; docs/setup.md)."
        )
    # eval() on the adapter too: torch.onnx.export restores the adapter's mode recursively.
    return TracingAdapter(model, sample_image, inference_func=detections).eval()


def _parts_using(traced: torch.jit.ScriptModule, op: str) -> List[str]:
    """Submodule names (``model.head.cls_score``) whose traced code calls ``op``."""
    parts = []
    nodes = list(traced.inlined_graph.nodes())
    while nodes:
        node = nodes.pop()
        nodes += [n for block in node.blocks() for n in block.nodes()]
        if node.kind() == op:
            scope = node.scopeName().split("/")[-1].replace("__module.", "")
            parts.append(scope or "model")
    return sorted(set(parts))


@contextlib.contextmanager
def locate_failure(model: nn.Module, what: str, adapter: nn.Module, sample: Tensor) -> Iterator[None]:
    """Turn an exception raised while tracing/exporting ``adapter`` (wrapping ``model``)
    into an :class:`ExportError` naming the part of the model: the innermost submodule
    that was running when tracing failed (``model.head``), or, when the ONNX converter
    rejects an operator, the submodules whose traced code uses it."""
    names = {m: ("model." + n if n else "model") for n, m in model.named_modules()}
    stack = []

    def enter(module, args):
        stack.append(names.get(module, type(module).__name__))

    def leave(module, args, output):
        stack.pop()

    handles = []
    for module in names:
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    try:
        yield
    except InputError:
        raise
    except Exception as e:
        message = " ".join(str(e).split())[:300]
        if stack:
            part = stack[-1]
            module = model if part == "model" else model.get_submodule(part[len("model."):])
            where = f"{part} ({type(module).__name__}) failed while being traced"
        else:
            for handle in handles:
                handle.remove()
            op = re.search(r"operator '([\w:.]+)'", str(e))
            parts = _parts_using(torch.jit.trace(adapter, (sample,), check_trace=False),
                                 op.group(1)) if op else []
            where = (f"{', '.join(parts)} uses {op.group(1)}, which has no ONNX conversion"
                     if parts else "the traced graph could not be converted")
        raise ExportError(
            f"Cannot export the model to {what}: {where} ({type(e).__name__}: {message}). "
            "That part of the model has no export path; replace it in the config with a "
            "standard Detectron2 layer, or export the other format."
        ) from None
    finally:
        for handle in handles:
            handle.remove()
