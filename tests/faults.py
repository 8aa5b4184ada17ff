"""Test-only models and scripts that inject faults or record what a process saw."""

import io
import itertools
import os
import sys
import time

import torch
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from efl.modeling import EFLRetinaNet


class LossBecomesNaN(EFLRetinaNet):
    """EFLRetinaNet whose box loss is NaN from iteration ``nan_at_iter`` on."""

    def __init__(self, *, nan_at_iter: int, **kwargs):
        super().__init__(**kwargs)
        self.nan_at_iter = nan_at_iter

    def losses(self, *args, **kwargs):
        out = super().losses(*args, **kwargs)
        if get_event_storage().iter >= self.nan_at_iter:
            out["loss_box_reg"] = out["loss_box_reg"] * float("nan")
        return out


class RecordingEFLRetinaNet(EFLRetinaNet):
    """EFLRetinaNet that saves, at every training forward, this rank's batch and its own
    state before the step to ``<record_dir>/rank<r>_iter<i>.pth``."""

    def __init__(self, *, record_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.record_dir = record_dir

    def forward(self, batched_inputs):
        if self.training:
            record = {
                "inputs": [
                    {"image": x["image"], "image_id": x["image_id"], "height": x["height"],
                     "width": x["width"], "boxes": x["instances"].gt_boxes.tensor,
                     "classes": x["instances"].gt_classes}
                    for x in batched_inputs
                ],
                "state": {k: v.clone() for k, v in self.state_dict().items()},
                "loss_normalizer": getattr(self, "loss_normalizer", None),
            }
            name = f"rank{comm.get_rank()}_iter{get_event_storage().iter}.pth"
            torch.save(record, os.path.join(self.record_dir, name))
        return super().forward(batched_inputs)


def slow_torch_save(seconds_per_chunk: float) -> None:
    """From now on in this process, ``torch.save`` to a file object writes in 64 KiB
    chunks with a pause after each (a save that a kill or signal can land inside)."""
    save = torch.save

    def slow_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        for i in range(0, len(data), 65536):
            f.write(data[i : i + 65536])
            f.flush()
            time.sleep(seconds_per_chunk)

    torch.save = slow_save


def save_forever(out_dir: str, seconds_per_chunk: float, stock: bool = False) -> None:
    """Save checkpoints model_<i>.pth (weights = i) in a loop, writing each in 64 KiB
    chunks with a pause after each, until killed. ``stock``: Detectron2's checkpointer."""
    from detectron2.checkpoint import DetectionCheckpointer

    from efl.checkpoint import EFLCheckpointer

    model = torch.nn.Linear(256, 256)  # 256 KiB: 4 chunks
    cls = DetectionCheckpointer if stock else EFLCheckpointer
    checkpointer = cls(model, out_dir, save_to_disk=True)
    slow_torch_save(seconds_per_chunk)
    for i in itertools.count():
        with torch.no_grad():
            model.weight.fill_(i)
            model.bias.fill_(i)
        print(f"saving {i}", flush=True)
        checkpointer.save(f"model_{i:07d}", iteration=i)


if __name__ == "__main__":
    save_forever(sys.argv[1], float(sys.argv[2]), stock=len(sys.argv) > 3 and sys.argv[3] == "stock")
