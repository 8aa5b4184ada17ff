"""Every workaround for Detectron2 v0.6 (PyPI's pb1-detectron2, the set-up's fallback), in
one place, behind one gate: :data:`LEGACY_D2`. On official Detectron2 main (the set-up's
default, pinned in ``scripts/setup_env.sh``) the gate is off and each name below is
Detectron2's own code or a no-op.

Each item names the v0.6 defect and the upstream commit whose fix it mirrors:

1. ``RetinaNetHead`` probes its norm with ``get_norm(norm, 1)``, i.e. ``GroupNorm(32, 1)``,
   which current torch rejects (main: probes with 32 channels, 330dd329, 2022-08)
   -> :func:`head_norm`.
2. ``FCOS.match_anchors`` takes ``max()`` over an empty dim on an image without boxes
   (main: ``FCOS._match_anchors`` + empty-image branch, ef2c3abb, 2022-02) -> :data:`FCOS`;
   v0.6's ``FCOS.label_anchors`` returns ``Boxes`` where main returns tensors
   -> :func:`matched_box_tensors`.
3. ``launch`` asserts CUDA and NCCL (main: gloo on CPU machines, b4b6cc9c, 2023-01)
   -> :func:`launch`.
4. ``SimpleTrainer`` creates its data iterator in ``__init__`` (main: lazily, with
   ``reset_data_loader``, 64f8b121, 2022-06), so a resumed run must restart it after
   setting the loader's start iteration -> :func:`restart_data_iterator`.
5. ``detectron2.export`` imports caffe2, which torch no longer ships, so the package does
   not import (main: caffe2 optional, d29378aa, 2021-11) -> :data:`TracingAdapter` is None
   and export (``efl.export``) is unavailable on v0.6.
6. The LVIS v1 metadata has no ``class_image_count`` (main: added with the federated loss,
   2409af0b, 2022-04) -> :func:`lvis_v1_class_image_count` is None on v0.6, and EQL reads
   the counts from the annotation file instead (``efl.data.image_frequency``).
7. ``DefaultTrainer.state_dict`` leaves out its inner trainer's state (the optimizer's), so
   a resumed YAML run restarts momentum (main: ``_trainer`` saved and loaded, ac6774fe,
   2021-11) -> :func:`with_inner_trainer_state`, :func:`load_inner_trainer_state`.

Not code: v0.6 uses ``Image.LINEAR`` (removed in Pillow 10; main: ff53992b, 2023-07), so the
set-up pins ``Pillow<10`` on the fallback path only. Workarounds for other libraries live
with their users: lvis-api's ``np.float`` in :mod:`efl.evaluation`.

The gate is main's ``SimpleTrainer.reset_data_loader``; supported are v0.6 and main from
2023-07 on (commits in between have only some of the fixes above).
"""

import logging
import math
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from detectron2.engine import SimpleTrainer
from detectron2.engine import launch as _d2_launch
from detectron2.modeling.meta_arch.fcos import FCOS as _D2FCOS
from detectron2.structures import Boxes
from detectron2.utils import comm

__all__ = [
    "LEGACY_D2",
    "HAS_NATIVE_OPS",
    "head_norm",
    "FCOS",
    "matched_box_tensors",
    "launch",
    "restart_data_iterator",
    "TracingAdapter",
    "lvis_v1_class_image_count",
    "with_inner_trainer_state",
    "load_inner_trainer_state",
]

logger = logging.getLogger(__name__)

#: True on Detectron2 v0.6: the workarounds below are active.
LEGACY_D2 = not hasattr(SimpleTrainer, "reset_data_loader")


def _has_native_ops() -> bool:
    try:
        from detectron2 import _C  # noqa: F401  (registers torch.ops.detectron2.*)

        return hasattr(torch.ops.detectron2, "nms_rotated")
    except (ImportError, AttributeError, RuntimeError):
        return False


#: Detectron2's compiled ops (rotated boxes, deformable conv, C++ COCO eval) are present;
#: False on the fallback, whose native module is a stand-in.
HAS_NATIVE_OPS = _has_native_ops()


def head_norm(norm):
    """(1) ``norm`` for Detectron2's ``RetinaNetHead`` / ``FCOSHead``: ``"GN"`` as is on
    main; on v0.6 a callable building GroupNorm with gcd(32, c) groups, which keeps v0.6's
    ``norm(1)`` type probe valid and gives every real layer (c divisible by 32) 32 groups."""
    if LEGACY_D2 and norm == "GN":
        return _group_norm_32
    return norm


def _group_norm_32(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


if LEGACY_D2:

    class FCOS(_D2FCOS):
        """(2) v0.6's FCOS, plus main's handling of images without annotations: every
        anchor of such an image is background."""

        @torch.no_grad()
        def label_anchors(self, anchors, gt_instances):
            if all(len(x) > 0 for x in gt_instances):
                return super().label_anchors(anchors, gt_instances)
            num_anchors = sum(len(a) for a in anchors)
            device = anchors[0].tensor.device
            labels, boxes = [], []
            for inst in gt_instances:
                if len(inst) > 0:
                    (label,), (box,) = super().label_anchors(anchors, [inst])
                else:
                    label = torch.full((num_anchors,), self.num_classes, dtype=torch.long,
                                       device=device)
                    box = Boxes(torch.zeros(num_anchors, 4, device=device))
                labels.append(label)
                boxes.append(box)
            return labels, boxes

else:
    FCOS = _D2FCOS  # Detectron2's own: the stock focal-loss baseline


if LEGACY_D2:
    TracingAdapter = None  # (5)
else:
    from detectron2.export import TracingAdapter


def matched_box_tensors(gt_boxes):
    """(2) ``FCOS.label_anchors``' matched boxes as (R, 4) tensors (v0.6 gives ``Boxes``)."""
    if LEGACY_D2:
        return [b.tensor for b in gt_boxes]
    return gt_boxes


def restart_data_iterator(trainer: SimpleTrainer) -> None:
    """(4) Make ``trainer`` take its next batch from a fresh ``iter(trainer.data_loader)``."""
    if LEGACY_D2:
        trainer._data_loader_iter = iter(trainer.data_loader)
    else:
        loader = trainer.data_loader
        trainer.reset_data_loader(lambda: loader)


def launch(main_func, num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str = None, args=(), timeout=timedelta(minutes=30)):
    """(3) ``detectron2.engine.launch``; on v0.6 without CUDA, main's gloo fallback."""
    if not LEGACY_D2 or torch.cuda.is_available():
        return _d2_launch(main_func, num_gpus_per_machine, num_machines, machine_rank,
                          dist_url, args=args, timeout=timeout)
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url=auto works only on one machine; pass tcp://HOST:PORT")
        from detectron2.engine.launch import _find_free_port

        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.start_processes(
        _gloo_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )


def _gloo_worker(local_rank, main_func, world_size, per_machine, machine_rank, dist_url,
                 args, timeout):
    global_rank = machine_rank * per_machine + local_rank
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size,
                            rank=global_rank, timeout=timeout)
    for i in range(world_size // per_machine):  # main: comm.create_local_process_group
        group = dist.new_group(list(range(i * per_machine, (i + 1) * per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    main_func(*args)


def lvis_v1_class_image_count(dataset_name: str):
    """Detectron2's LVIS v1 ``class_image_count`` of ``dataset_name`` (a list of
    ``{"id", "image_count"}``), or None where Detectron2 has none (v0.6, item 6)."""
    from detectron2.data import MetadataCatalog

    return MetadataCatalog.get(dataset_name).get("class_image_count", None)


def with_inner_trainer_state(trainer, state: dict) -> dict:
    """``state`` (a ``DefaultTrainer``'s ``state_dict()``) with its inner trainer's state
    (optimizer) as ``_trainer``, as main saves it (item 7); unchanged on main."""
    if LEGACY_D2 and "_trainer" not in state:
        state["_trainer"] = trainer._trainer.state_dict()
    return state


def load_inner_trainer_state(trainer, state: dict) -> None:
    """Load what :func:`with_inner_trainer_state` added (v0.6 only; main's
    ``DefaultTrainer.load_state_dict`` does it itself)."""
    if LEGACY_D2 and "_trainer" in state:
        trainer._trainer.load_state_dict(state["_trainer"])
