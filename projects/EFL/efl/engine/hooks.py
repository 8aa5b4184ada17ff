"""Training hooks specific to this project: EFL summaries in the log, what an exact resume
needs beyond the state_dicts, a cross-rank check of the EFL state, and an evaluation hook
that does not evaluate a failed run."""

import logging

import torch

from detectron2.engine import HookBase
from detectron2.engine import hooks as d2_hooks
from detectron2.utils import comm

from ..losses import statistics_losses
from ..records import EFL_STATS, SUMMARY_GROUPS, efl_summary_key
from ..rng import get_rng_state, set_rng_state

__all__ = ["EFLSummaryLogger", "ResumeState", "EFLStateSyncCheck", "EvalHook", "unwrap_ddp"]

logger = logging.getLogger(__name__)

# Python floats that Detectron2's dense detectors keep outside the state_dict
# (``DenseDetector._ema_update``: the EMA of the positive-anchor count).
_MODEL_FLOATS = ("loss_normalizer",)


def unwrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside ``DistributedDataParallel``, or ``model`` itself."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _is_checkpoint_iteration(trainer, period: int) -> bool:
    """True after the iterations at which ``PeriodicCheckpointer(period)`` saves."""
    next_iter = trainer.iter + 1
    return next_iter % period == 0 or next_iter >= trainer.max_iter


class EFLSummaryLogger(HookBase):
    """Every ``period`` iterations, log the EFL state summaries that the loss put into the
    EventStorage (mean g and gamma per frequency group), so they appear in the training
    log next to the losses; metrics.json and TensorBoard get them from the writers."""

    def __init__(self, period: int = 20):
        self._period = period

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter % self._period and next_iter != self.trainer.max_iter:
            return
        latest = self.trainer.storage.latest()
        parts = []
        for stat, label in zip(EFL_STATS, ("g", "gamma")):
            keys = {group: efl_summary_key(stat, group) for group in SUMMARY_GROUPS}
            values = [f"{group}={latest[key][0]:.3f}" for group, key in keys.items() if key in latest]
            if values:
                parts.append(f"{label}: " + " ".join(values))
        if parts:
            logger.info(f"iter: {next_iter}  EFL state  " + "  |  ".join(parts))


class ResumeState(HookBase):
    """The state an exact resume needs that no other state_dict holds: per process, the
    RNG states (python, numpy, torch) and the model's loss-normaliser EMA
    (``model.loss_normalizer``); and the training loader's ``state_dict`` (its stream's
    seed). Captured from every rank at the iterations the ``PeriodicCheckpointer(period)``
    saves (register this hook before it) or by :meth:`capture` before another save, saved
    in the checkpoint as ``trainer.hooks.ResumeState``; the per-rank states are restored on
    resume (the RNG states just before the first resumed step), the loader's by
    :func:`efl.engine.resume.resume_or_load`.
    """

    def __init__(self, period: int):
        self._period = period
        self._ranks = None  # captured states, one per rank
        self._pending_rng = None

    def _local_state(self):
        model = unwrap_ddp(self.trainer.model)
        floats = {k: float(getattr(model, k)) for k in _MODEL_FLOATS if hasattr(model, k)}
        return {"rng": get_rng_state(), "model_floats": floats}

    def after_step(self):
        if _is_checkpoint_iteration(self.trainer, self._period):
            self.capture()

    def capture(self) -> None:
        """With several processes: gather every rank's state now (every rank calls this,
        before a checkpoint of this iteration is written)."""
        if comm.get_world_size() > 1:
            self._ranks = comm.all_gather(self._local_state())

    def state_dict(self):
        # One process: its state now (the checkpointer calls this right after the step).
        ranks = self._ranks if comm.get_world_size() > 1 else [self._local_state()]
        ret = {"ranks": ranks} if ranks is not None else {}
        loader = self.trainer.data_loader
        if hasattr(loader, "state_dict"):
            ret["data_loader"] = loader.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        ranks = state_dict.get("ranks")
        if ranks is None:
            return
        rank, world = comm.get_rank(), comm.get_world_size()
        if len(ranks) != world:
            logger.warning(
                f"The checkpoint holds the RNG states and loss normaliser of {len(ranks)} "
                f"processes, this run has {world}: every process continues from those of "
                "process 0, so the run is not an exact continuation."
            )
        state = ranks[rank] if len(ranks) == world else ranks[0]
        model = unwrap_ddp(self.trainer.model)
        for key, value in state["model_floats"].items():
            setattr(model, key, value)
        self._pending_rng = state["rng"]

    def before_train(self):
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None


class EFLStateSyncCheck(HookBase):
    """With several processes: at every checkpoint iteration, check that every
    ``EqualizedFocalLoss`` state is bitwise identical on all ranks. The statistics are
    all-reduced before they are added, so a difference means a bug (the known trap: workers
    drifting apart); training stops with the tensor that differs."""

    def __init__(self, period: int):
        self._period = period

    def after_step(self):
        if comm.get_world_size() > 1 and _is_checkpoint_iteration(self.trainer, self._period):
            self.check()

    def check(self) -> None:
        model = unwrap_ddp(self.trainer.model)
        mine = {
            f"{name}.{key}": value.detach().cpu()
            for name, module in statistics_losses(model)
            for key, value in module.state_dict().items()
        }  # fmt: skip
        everyone = comm.all_gather(mine)
        for key, value in mine.items():
            differ = [r for r, other in enumerate(everyone) if not torch.equal(other[key], value)]
            if differ:
                raise RuntimeError(
                    f"EFL state {key} differs between ranks {comm.get_rank()} and {differ} at "
                    f"iteration {self.trainer.iter + 1}: the statistics were not all-reduced."
                )
        logger.info(
            f"EFL state identical on all {len(everyone)} ranks at iteration {self.trainer.iter + 1} "
            f"({len(mine)} tensors)"
        )


class EvalHook(d2_hooks.EvalHook):
    """Detectron2's EvalHook without the final evaluation of a failed run: Detectron2
    evaluates in ``after_train`` whenever ``trainer.iter + 1 >= max_iter``, which holds
    when the last iteration raised; its results would look like those of a finished run.
    (``TrainerBase.train`` sets ``iter = max_iter`` when all iterations completed.)"""

    def after_train(self):
        if self.trainer.iter < self.trainer.max_iter:
            del self._func
            return
        super().after_train()
