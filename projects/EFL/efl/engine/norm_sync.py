"""BatchNorm statistics averaged over the processes before each evaluation (the YOLOX-IP
recipe's ``runtime.async_norm: true``; United-Perception ``up/runner/base_runner.py``,
``all_reduce_norm`` in ``up/utils/env/dist_helper.py``).

Under DDP every process keeps its own running mean / variance (its own images), and the
model EMA averages them per process; without this, evaluation and the checkpoint see rank
0's alone. Config: ``train.all_reduce_norm = True`` (default off); the trainer then
averages the model's and the EMA's BatchNorm state entries, in place, after the EMA update
of every evaluation iteration (``train.eval_period``, and the last) and before that
iteration's checkpoint, so an exact resume continues from the averaged state, as theirs
(EMA step, all-reduce, evaluate, save). A single process: nothing to do.
"""

import logging
from typing import Iterable, Optional

import torch
import torch.distributed as dist

from detectron2.engine import HookBase
from detectron2.utils import comm

from .hooks import unwrap_ddp

__all__ = ["all_reduce_norm", "AllReduceNorm"]

logger = logging.getLogger(__name__)

_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


@torch.no_grad()
def all_reduce_norm(module: torch.nn.Module) -> int:
    """Replace every BatchNorm state entry of ``module`` (running mean / variance, affine,
    ``num_batches_tracked``) by its mean over the processes, as theirs (one flat all-reduce;
    here in float64; integers: the mean rounded down). Returns how many tensors were
    averaged (0 with one process)."""
    world = comm.get_world_size()
    if world == 1:
        return 0
    states = [t.data for m in module.modules() if isinstance(m, _NORMS)
              for t in m.state_dict(keep_vars=True).values()]
    if not states:
        return 0
    flat = torch.cat([t.reshape(-1).double() for t in states])
    dist.all_reduce(flat)
    flat /= world
    for t, mean in zip(states, flat.split([t.numel() for t in states])):
        t.copy_((mean if t.is_floating_point() else mean.floor()).view_as(t))
    return len(states)


class AllReduceNorm(HookBase):
    """After the step of every evaluation iteration (``next_iter % eval_period == 0``, and
    the last): :func:`all_reduce_norm` on the model (DDP unwrapped) and ``ema`` (an
    ``AveragedModel`` or None). Register it after the EMA update and before the
    ``PeriodicCheckpointer`` and ``EvalHook``."""

    def __init__(self, eval_period: int, ema: Optional[torch.nn.Module] = None):
        self._period = eval_period
        self._ema = ema

    def _modules(self) -> Iterable[torch.nn.Module]:
        yield unwrap_ddp(self.trainer.model)
        if self._ema is not None:
            yield self._ema.module

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter >= self.trainer.max_iter or (self._period > 0 and next_iter % self._period == 0):
            count = sum(all_reduce_norm(module) for module in self._modules())
            if count:
                logger.info(f"BatchNorm state averaged over {comm.get_world_size()} processes "
                            f"after iteration {next_iter} ({count} tensors)")
