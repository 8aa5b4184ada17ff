"""Every workaround for Detectron2 v0.6 (the release on PyPI as pb1-detectron2) against
today's torch/numpy, in one place. Each item names the v0.6 defect and the upstream fix
it mirrors; on Detectron2 main each one is a no-op or equivalent to the upstream code.

1. LVIS evaluation: lvis==0.5.3 uses ``np.float``, removed in numpy 1.24
   -> ``restore_numpy_aliases`` (upstream lvis-api is unreleased since 2020).
2. GroupNorm in ``RetinaNetHead`` (used by FCOS): v0.6 probes ``get_norm(norm, 1)``,
   i.e. ``GroupNorm(32, 1)``, which current torch rejects -> ``group_norm`` callable
   (main probes with 32 channels).
3. FCOS on an image without annotations: v0.6 ``FCOS.match_anchors`` takes ``max()`` over
   an empty dim -> ``FCOS.label_anchors`` below (main handles ``len(inst) == 0``).
4. ``DenseDetector._decode_multi_level_predictions`` ignores its ``score_thresh`` and
   ``topk_candidates`` arguments and reads ``self.test_*`` (fixed on main): our configs
   set the test thresholds on the model, so both code paths agree; nothing to patch.
5. ``DefaultTrainer`` checkpoints hold no optimizer state (main adds ``_trainer`` to its
   state_dict): handled in ``efl.engine.trainer.Trainer.state_dict``.
6. ``launch`` asserts CUDA and NCCL (main falls back to gloo) -> ``launch`` below.
7. ``create_ddp_model`` passes ``device_ids`` for CPU modules (DDP raises) ->
   ``create_ddp_model`` below.
8. ``AMPTrainer`` asserts CUDA: the trainer uses ``SimpleTrainer`` on CPU.
9. ``torch.load`` defaults to ``weights_only=True``: all checkpoint state is tensors and
   plain Python numbers (no numpy objects).
10. ``FCOS`` has no ``from_config`` and is not registered: ``efl.modeling.fcos`` adds both.
11. ``np.int`` in ``detectron2/data/build.py`` makes the class histogram silently skip
    (it logs nothing); harmless, left alone.
12. ``SimpleTrainer`` creates its data iterator in ``__init__`` (main creates it lazily,
    ``_data_loader_iter_obj``, and adds ``reset_data_loader``), so a resumed run must
    restart it after setting the start iteration -> ``restart_data_iterator``.
"""

import logging
import math
import os
import sys
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import launch as _d2_launch
from detectron2.modeling.meta_arch.fcos import FCOS as _D2FCOS
from detectron2.structures import Boxes
from detectron2.utils import comm

__all__ = [
    "restore_numpy_aliases",
    "group_norm",
    "FCOS",
    "launch",
    "create_ddp_model",
    "restart_data_iterator",
]

logger = logging.getLogger(__name__)


def restore_numpy_aliases() -> None:
    """(1) lvis 0.5.3 LVISEval uses ``np.float``; numpy >= 1.24 removed the alias."""
    for name, value in (("float", float), ("int", int)):
        if name not in np.__dict__:
            setattr(np, name, value)


def group_norm(channels: int) -> nn.GroupNorm:
    """(2) GroupNorm with 32 groups, usable as ``RetinaNetHead(norm=group_norm)``.

    v0.6 calls ``norm(1)`` once only to read the layer type; gcd(32, c) groups keep that
    probe valid while every real layer (c divisible by 32) gets exactly 32 groups.
    """
    return nn.GroupNorm(math.gcd(32, channels), channels)


class FCOS(_D2FCOS):
    """(3) Detectron2's FCOS, plus training on images without annotations on v0.6.

    Mirrors main's ``FCOS.label_anchors``: an image with no boxes labels every anchor
    background. Identical to Detectron2's FCOS otherwise (the stock focal-loss baseline).
    """

    _HANDLES_EMPTY_IMAGES = hasattr(_D2FCOS, "_match_anchors")  # main's rewrite has the fix

    @torch.no_grad()
    def label_anchors(self, anchors, gt_instances):
        if self._HANDLES_EMPTY_IMAGES or all(len(x) > 0 for x in gt_instances):
            return super().label_anchors(anchors, gt_instances)
        num_anchors = sum(len(a) for a in anchors)
        device = anchors[0].tensor.device
        labels, boxes = [], []
        for inst in gt_instances:
            if len(inst) > 0:
                (label,), (box,) = super().label_anchors(anchors, [inst])
            else:
                label = torch.full((num_anchors,), self.num_classes, dtype=torch.long, device=device)
                box = Boxes(torch.zeros(num_anchors, 4, device=device))
            labels.append(label)
            boxes.append(box)
        return labels, boxes


def create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """(7) ``detectron2.engine.create_ddp_model`` that also works for CPU modules (gloo)."""
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs:
        on_cuda = next(model.parameters()).is_cuda
        kwargs["device_ids"] = [comm.get_local_rank()] if on_cuda else None
    return DistributedDataParallel(model, **kwargs)


def restart_data_iterator(trainer) -> None:
    """(12) Make ``SimpleTrainer`` take its next batch from a fresh ``iter(data_loader)``."""
    if isinstance(getattr(type(trainer), "_data_loader_iter", None), property):  # main
        trainer._data_loader_iter_obj = None
    else:  # v0.6
        trainer._data_loader_iter = iter(trainer.data_loader)


def launch(
    main_func,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = None,
    args=(),
    timeout=timedelta(minutes=30),
):
    """(6) ``detectron2.engine.launch``; without CUDA, the processes use gloo on CPU.

    ``num_gpus_per_machine`` is then the number of CPU processes per machine; each uses
    cores / processes threads unless OMP_NUM_THREADS is set (as torchrun does). A process
    that ends with ``sys.exit(code)`` (e.g. 2 after a clear error message) makes this
    process exit with the same code, without a stack trace of the launcher.
    """
    try:
        if torch.cuda.is_available():
            return _d2_launch(main_func, num_gpus_per_machine, num_machines, machine_rank,
                              dist_url, args=args, timeout=timeout)
        return _launch_gloo(main_func, num_gpus_per_machine, num_machines, machine_rank,
                            dist_url, args, timeout)
    except mp.ProcessExitedException as e:
        if e.exit_code is not None and e.exit_code > 0:
            sys.exit(e.exit_code)
        raise


def _launch_gloo(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args,
                 timeout):
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
    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun: the processes share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_machine))
    global_rank = machine_rank * per_machine + local_rank
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size,
                            rank=global_rank, timeout=timeout)
    # Detectron2's comm needs the group of the processes on this machine.
    if hasattr(comm, "create_local_process_group"):  # Detectron2 main
        comm.create_local_process_group(per_machine)
    else:
        for i in range(world_size // per_machine):
            group = dist.new_group(list(range(i * per_machine, (i + 1) * per_machine)))
            if i == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
