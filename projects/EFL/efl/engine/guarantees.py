"""The run guarantees as pieces that any Detectron2 trainer registers: the LazyConfig
``Trainer``, ``YAMLTrainer``, or a Detectron2 user's own ``DefaultTrainer`` subclass
(docs/yaml-route.md has the ten lines)::

    register_run_guarantees(trainer, checkpoint_period)

- **Atomic checkpoints** with the loss state: ``trainer.checkpointer`` becomes an
  :class:`efl.checkpoint.EFLCheckpointer` (same model, folder and checkpointables; the
  hooks that held the old one get it).
- **GradScaler** (:class:`GradScalerCommit`): under AMP (Detectron2's ``AMPTrainer`` and
  its ``grad_scaler``, e.g. ``SOLVER.AMP.ENABLED``), every loss with state accumulates
  unscaled statistics, each step's committed right after it (a step the scaler skipped is
  left out), before any hook reads or saves them.
- **Resume state** (:class:`efl.engine.hooks.ResumeState`): RNG states, the loss
  normaliser and the training loader's stream in every checkpoint; with several
  processes, a check that the loss state is identical on all ranks.
- **The EFL-activity note** (:class:`efl.engine.activity.EFLActivityCheck`, main process).
- **Preemption** (:class:`efl.engine.preemption.PreemptionCheckpointer`, last): SIGTERM /
  ``$SUBMITIT_PREEMPT_SIGNAL`` -> checkpoint after the current iteration -> exit 128 +
  signal.

Resuming is :func:`efl.engine.resume.resume_or_load` (the trainer's ``resume_or_load``).
"""

from typing import List

from detectron2.engine import HookBase
from detectron2.engine import hooks as d2_hooks
from detectron2.utils import comm

from ..checkpoint import EFLCheckpointer
from ..losses import statistics_losses
from .activity import EFLActivityCheck
from .hooks import EFLStateSyncCheck, ResumeState, unwrap_ddp
from .preemption import PreemptionCheckpointer

__all__ = ["GradScalerCommit", "register_run_guarantees", "use_atomic_checkpointer"]


class GradScalerCommit(HookBase):
    """Under AMP: the statistics of every loss with state (``statistics_losses``) are
    divided by the scale of their step, and added after ``scaler.update()`` unless the
    scaler skipped the step. The scaler is the one of the trainer's step loop
    (``trainer._trainer.grad_scaler``, Detectron2's ``AMPTrainer``; or ``trainer``'s own),
    attached when registered and again before training (a scaler replaced in between is
    followed); each step is committed in ``after_step``, so register this hook before any
    that reads or saves the state. Without a scaler it does nothing."""

    def __init__(self):
        self.losses = []

    def attach(self) -> None:
        loop = getattr(self.trainer, "_trainer", self.trainer)
        scaler = getattr(loop, "grad_scaler", None)
        if scaler is None:
            return
        self.losses = [loss for _, loss in statistics_losses(unwrap_ddp(self.trainer.model))]
        for loss in self.losses:
            loss.use_grad_scaler(scaler)

    def before_train(self):
        self.attach()

    def after_step(self):
        for loss in self.losses:
            loss.commit_statistics()


def use_atomic_checkpointer(trainer) -> EFLCheckpointer:
    """Make ``trainer.checkpointer`` an ``EFLCheckpointer`` (atomic writes, exact-fit
    resume, the loss state's init messages) with the same model, folder and
    checkpointables; hooks holding the old one (``PeriodicCheckpointer``) get the new one."""
    old = trainer.checkpointer
    if isinstance(old, EFLCheckpointer):
        return old
    new = EFLCheckpointer(old.model, old.save_dir, save_to_disk=old.save_to_disk,
                          **old.checkpointables)
    trainer.checkpointer = new
    for hook in trainer._hooks:
        if getattr(hook, "checkpointer", None) is old:
            hook.checkpointer = new
    return new


def register_run_guarantees(trainer, checkpoint_period: int) -> List[HookBase]:
    """Register the run guarantees (module docstring) on ``trainer`` (a ``TrainerBase``
    with ``model``, ``data_loader`` and ``checkpointer``, e.g. a ``DefaultTrainer``), after
    its own hooks: the scaler, resume-state and state-check hooks go before its first
    ``PeriodicCheckpointer`` or ``EvalHook`` (the same place on every rank), the activity
    note and preemption last. ``checkpoint_period``: the ``PeriodicCheckpointer``'s
    (``SOLVER.CHECKPOINT_PERIOD``, ``train.checkpointer.period``). Returns the hooks
    (none if they are registered already, e.g. by a base class)."""
    if any(isinstance(h, PreemptionCheckpointer) for h in trainer._hooks):
        return []
    checkpointer = use_atomic_checkpointer(trainer)
    resume_state = ResumeState(checkpoint_period)
    early = [GradScalerCommit(), resume_state,
             EFLStateSyncCheck(checkpoint_period) if comm.get_world_size() > 1 else None]
    late = [EFLActivityCheck() if comm.is_main_process() else None,
            PreemptionCheckpointer(checkpointer, checkpoint_period,
                                   before_save=resume_state.capture)]
    early, late = [h for h in early if h], [h for h in late if h]
    existing = list(trainer._hooks)
    at = next((i for i, h in enumerate(existing)
               if isinstance(h, (d2_hooks.PeriodicCheckpointer, d2_hooks.EvalHook))), len(existing))
    trainer.register_hooks(early + late)  # sets each hook's trainer
    trainer._hooks[:] = existing[:at] + early + existing[at:] + late
    early[0].attach()
    return early + late
