"""The trainer's one-time note when EFL is acting almost as focal loss (see
:mod:`efl.activity` for the test, the threshold and the warm-up)."""

import logging
import math

from detectron2.engine import HookBase

from ..activity import WARMUP_FRACTION, focal_like_note, watched_classes_g
from ..equalization_losses import EqualizationLossV2
from ..losses import statistics_losses
from ..records import RARE, efl_summary_key

__all__ = ["EFLActivityCheck"]

logger = logging.getLogger(__name__)


class EFLActivityCheck(HookBase):
    """Once, after :data:`efl.activity.WARMUP_FRACTION` of ``max_iter``: if the rare
    classes' mean g (the loss's ``efl/pos_neg_r`` in the EventStorage; without frequency
    groups, the least frequent classes' from the loss's state) is still close to 1, log in
    plain words that EFL is acting almost as focal loss, and why. Models without
    an EFL or EQFL loss are left alone, as are focal loss / QFL recording statistics
    (``statistics_only``). ``note``: the message, once logged."""

    def __init__(self):
        self.note = None
        self._at = None

    def before_train(self):
        self._at = max(1, math.ceil(WARMUP_FRACTION * self.trainer.max_iter))

    def after_step(self):
        done = self.trainer.iter + 1
        if done != self._at:  # exactly once; a run resumed later starts past it
            return
        model = self.trainer.model
        model = getattr(model, "module", model)  # DistributedDataParallel
        # a focal loss / QFL that records statistics is focal loss by design, and EQLv2's g
        # (unclamped, weights f(g)) says nothing about focal-like behaviour: no note for them
        losses = [m for _, m in statistics_losses(model)
                  if not m.statistics_only and not isinstance(m, EqualizationLossV2)]
        if not losses:
            return
        efl = losses[0]
        latest = self.trainer.storage.latest()
        key = efl_summary_key("pos_neg", RARE)
        classes, g = watched_classes_g(latest[key][0] if key in latest else None,
                                       efl.pos_neg.cpu(), efl.pos_grad.cpu())
        self.note = focal_like_note(g, classes, efl.gamma_b, efl.scale_factor,
                                    f"after {done} of {self.trainer.max_iter} iterations",
                                    efl.focusing, efl.weighting)
        if self.note:
            logger.info(self.note)
