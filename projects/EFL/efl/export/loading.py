"""Build a config's detector with trained weights for inference: every weight must come
from the checkpoint (a tensor of another shape or one missing is an error naming it),
except the loss modules' state, which inference does not use."""

import contextlib
import copy
import logging
import os
import warnings

from torch import nn

from ..checkpoint import EFLCheckpointer, fit_problems
from ..errors import CheckpointError
from ..losses import statistics_losses

__all__ = ["build_inference_model", "load_weights", "quiet_inference_logs"]

logger = logging.getLogger(__name__)


QUIET_LOGGERS = ("fvcore", "detectron2", "efl.checkpoint", "efl.engine")


@contextlib.contextmanager
def quiet_inference_logs():
    """Around a command-line tool's work: weights that do not fit are one error paragraph
    (:func:`load_weights`), not the checkpointer's per-tensor log; no model printout and no
    torch.jit deprecation notes. The loggers' levels and the warning filters are restored
    on exit, so a caller in the same process (a test, a notebook) keeps its own."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is deprecated", category=FutureWarning)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


class _Recording(EFLCheckpointer):
    """Keeps what loading left out (fvcore's ``_IncompatibleKeys``)."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_weights(model: nn.Module, path: str) -> dict:
    """Load ``path`` (a Detectron2 checkpoint, as ``train.init_checkpoint``) into ``model``;
    returns what the checkpoint holds besides the model (e.g. ``ema``).

    Raises:
        CheckpointError: no path, a missing or unreadable file, or weights that do not fit
            the model (names the tensors and both shapes).
    """
    if not path:
        raise CheckpointError(
            "No weights given: set train.init_checkpoint=path/to/model_final.pth (the "
            "checkpoint of a run trained with this config)."
        )
    if "://" not in path and not os.path.isfile(path):
        raise CheckpointError(
            f"train.init_checkpoint={path}: file not found. Give the path of the trained "
            "model's checkpoint, e.g. output/demo/seed0/efl/model_final.pth."
        )
    checkpointer = _Recording(model)
    rest = checkpointer.resume_or_load(path, resume=False) or {}
    incompatible = checkpointer.incompatible
    if incompatible is None:  # nothing loaded (fvcore returns early for an empty path)
        return rest
    loss_prefixes = tuple(f"{n}." for n, _ in statistics_losses(model))
    problems = fit_problems(incompatible, exempt=loss_prefixes, unexpected=False)
    if problems:
        raise CheckpointError(
            f"The weights in {path} do not fit the model of this config: "
            + "; ".join(problems)
            + ". Use the config the checkpoint was trained with (same model and "
            "model.num_classes), or a checkpoint trained with this one."
        )
    return rest


def build_inference_model(cfg) -> nn.Module:
    """``cfg``'s model (``Trainer.build_model``, on ``train.device``) in eval mode, weights
    from ``train.init_checkpoint`` (see :func:`load_weights`; its model EMA with
    ``train.ema.enabled``, as evaluation)."""
    from ..engine import Trainer
    from ..engine.ema import use_checkpoint_ema

    cfg = copy.deepcopy(cfg)
    if "class_groups" in (cfg.model.get("cls_loss") or {}):
        cfg.model.cls_loss.class_groups = None  # training statistics only; needs no dataset
    if "image_frequency" in (cfg.model.get("cls_loss") or {}):  # EQL: training only, too
        cfg.model.cls_loss.image_frequency = [0.0] * int(cfg.model.num_classes)
    model = Trainer.build_model(cfg)
    use_checkpoint_ema(cfg.train, model, load_weights(model, cfg.train.init_checkpoint))
    return model.eval()
