"""Training hooks specific to EFL."""

import logging

from detectron2.engine import HookBase

__all__ = ["EFLSummaryLogger"]

logger = logging.getLogger(__name__)


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
        for stat in ("pos_neg", "gamma"):
            values = [
                f"{key.rsplit('_', 1)[1]}={latest[key][0]:.3f}"
                for key in (f"efl/{stat}_{g}" for g in ("all", "r", "c", "f"))
                if key in latest
            ]
            if values:
                parts.append(f"{'g' if stat == 'pos_neg' else 'gamma'}: " + " ".join(values))
        if parts:
            logger.info(f"iter: {next_iter}  EFL state  " + "  |  ".join(parts))
