"""The detectors the GPU check times, built from the project's model configs, and random
training batches for them.

``build_detector(arch, loss, num_classes)``: ``arch`` is "retinanet" (Detectron2's
RetinaNet R-50-FPN, configs/common/models/retinanet.py, 9 anchors per location) or
"improved" (the authors' ATSSRetinaNet R-50-FPN, configs/common/models/atss.py, 2 anchors
per location); ``loss`` is "focal" (stock) or "efl" (EFLRetinaNet / ATSSRetinaNet with an
EqualizedFocalLoss). Random initialisation: nothing is downloaded.
"""

import copy
import os
from typing import List, Optional, Sequence, Tuple, Union

import torch

from ..errors import InputError

__all__ = ["ARCHS", "ANCHORS_PER_LOCATION", "load_model_config", "set_loss", "build_detector",
           "random_batch", "train_step"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))
ARCHS = {"retinanet": "configs/common/models/retinanet.py",
         "improved": "configs/common/models/atss.py"}
ANCHORS_PER_LOCATION = {"retinanet": 9, "improved": 2}


def load_model_config(arch: str):
    """The LazyCall of ``arch``'s model from configs/common/models/ (K = 1203)."""
    from detectron2.config import LazyConfig

    if arch not in ARCHS:
        raise InputError(f"unknown detector {arch!r}: one of {sorted(ARCHS)}")
    path = os.path.join(ROOT, ARCHS[arch])
    if not os.path.isfile(path):
        raise InputError(f"model config {path} not found: run from a checkout of this project")
    return LazyConfig.load(path).model


def set_loss(model, loss: str, class_groups: Optional[Sequence[str]] = None):
    """In place: "focal" leaves the model as is; "efl" makes a RetinaNet an EFLRetinaNet
    (an ATSSRetinaNet stays one) with an EqualizedFocalLoss of the model's K as its
    ``cls_loss``."""
    from detectron2.config import LazyCall as L
    from detectron2.modeling import RetinaNet

    from .. import EFLRetinaNet, EqualizedFocalLoss

    if loss not in ("focal", "efl"):
        raise InputError(f"unknown loss {loss!r}: 'focal' or 'efl'")
    if loss == "efl":
        if model._target_ is RetinaNet:
            model._target_ = EFLRetinaNet
        model.cls_loss = L(EqualizedFocalLoss)(num_classes=model.num_classes, class_groups=class_groups)
    return model


def build_detector(arch: str, loss: str, num_classes: int, device="cpu", tiny: bool = False,
                   seed: int = 0, batch_norm: bool = False) -> torch.nn.Module:
    """A randomly initialised detector in train mode (weights from ``seed``, the same for
    both losses). ``tiny``: ResNet-18 trunk, 32-channel FPN, one conv per head tower.
    ``batch_norm``: BatchNorm instead of FrozenBN in the trunk and a normalised input, so
    that activations stay in float16's range without pre-trained weights."""
    from detectron2.config import instantiate

    model = load_model_config(arch)
    model.num_classes = num_classes
    if batch_norm:
        model.backbone.bottom_up.stem.norm = "BN"
        model.backbone.bottom_up.stages.norm = "BN"
        model.pixel_std = [57.375, 57.120, 58.395]
    if tiny:
        model.backbone.bottom_up.stages.depth = 18
        model.backbone.bottom_up.stages.pop("stride_in_1x1")  # BasicBlock has none
        if model.backbone.top_block.in_channels == 2048:  # on res5 (the improved one: lateral)
            model.backbone.top_block.in_channels = 512
        model.backbone.out_channels = 32
        model.head.input_shape = [{"channels": 32}] * 5
        model.head.conv_dims = [32]
    set_loss(model, loss)
    torch.manual_seed(seed)
    return instantiate(model).to(device).train()


def random_batch(batch: int, size: Union[int, Sequence[int]], num_classes: int, device,
                 seed: int = 0, boxes_per_image: int = 4,
                 box_range: Optional[Tuple[float, float]] = None) -> List[dict]:
    """``batch`` training inputs: random BGR images of ``size`` (H, W, or one int for a
    square), ``boxes_per_image`` random boxes with sides in ``box_range`` pixels (default
    16-44 px, scaled with the image's short side above 128 px) and random classes."""
    from detectron2.structures import Boxes, Instances

    h, w = (size, size) if isinstance(size, int) else tuple(size)
    lo, hi = box_range or (16 * max(1.0, min(h, w) / 128), 44 * max(1.0, min(h, w) / 128))
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        n = boxes_per_image
        xy = torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 0.6
        wh = lo + torch.rand(n, 2, generator=gen) * (hi - lo)
        inst = Instances((h, w))
        far = (xy + wh).minimum(torch.tensor([w - 1.0, h - 1.0]))
        inst.gt_boxes = Boxes(torch.cat([xy, far], 1).to(device))
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=gen).to(device)
        image = torch.randint(0, 255, (3, h, w), generator=gen).float().to(device)
        out.append({"image": image, "instances": inst})
    return out


def train_step(model, optimizer, data, amp_dtype: Optional[torch.dtype] = None, scaler=None,
               loss_scale: Optional[torch.Tensor] = None) -> dict:
    """One SGD step, under ``torch.autocast(amp_dtype)`` when given and through the
    ``GradScaler`` when given; ``loss_scale`` multiplies the total loss (the GPU check
    passes inf to force an overflow). Returns the float loss terms."""
    from detectron2.utils.events import EventStorage

    device_type = next(model.parameters()).device.type
    with EventStorage():
        with torch.autocast(device_type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            losses = model(copy.copy(data))
        total = sum(losses.values())
        if loss_scale is not None:
            total = total * loss_scale
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}
