"""``EFLCheckpointer``: Detectron2's ``DetectionCheckpointer`` that

- writes every checkpoint and ``last_checkpoint`` atomically (temporary file in the same
  folder, fsync, rename), so a process killed while saving never leaves a truncated file,
  let alone one that ``last_checkpoint`` points to; temporaries of killed saves are removed
  when a run starts;
- initialises from a torchvision ResNet file too (mapped onto the Detectron2 backbone),
  and refuses a checkpoint of the EFL authors' code with how to convert it;
- says in the log what a checkpoint did not initialise when it initialises a model
  (``train.init_checkpoint``): EFL state absent (a stock RetinaNet checkpoint) or for another
  class count, classifier of another class count, other missing tensors;
- refuses, on resume, a checkpoint that does not fit the model exactly (CheckpointError
  naming the tensors), and a missing or unreadable checkpoint file.
"""

import logging
import os
from typing import List, Optional, Sequence, Tuple

import torch

from detectron2.checkpoint import DetectionCheckpointer

from .convert import adapt_checkpoint
from .errors import CheckpointError
from .io import atomic_write, pid_alive, temporary_pid
from .losses import statistics_losses

__all__ = ["EFLCheckpointer", "fit_problems", "read_last_checkpoint", "rename_legacy_loss_keys"]

logger = logging.getLogger(__name__)

def rename_legacy_loss_keys(state: dict, model_keys=None) -> dict:
    """``state`` (a model state dict) with the keys of checkpoints written before detectors
    held their loss as ``cls_loss``, ``efl.<name>``, renamed ``cls_loss.<name>`` (order
    kept); unchanged when ``model_keys`` (the model's state-dict keys, if given) has
    ``efl.`` keys of its own. The one place old checkpoints are mapped."""
    if model_keys is not None and any(k.startswith("efl.") for k in model_keys):
        return state
    if not any(k.startswith("efl.") for k in state):
        return state
    return {("cls_loss." + k[len("efl."):] if k.startswith("efl.") else k): v
            for k, v in state.items()}



class EFLCheckpointer(DetectionCheckpointer):
    """Drop-in for ``DetectionCheckpointer`` (same arguments); see the module docstring."""

    _loading = ""

    # ----- saving ------------------------------------------------------------------------
    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if "://" in self.save_dir:  # not a local folder: no atomic rename available
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if "://" in self.save_dir:
            return super().tag_last_checkpoint(last_filename_basename)
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    def remove_stale_temporaries(self) -> None:
        """Delete temporaries left by saves whose process was killed."""
        if not self.save_to_disk or not self.save_dir or not os.path.isdir(self.save_dir):
            return
        for entry in os.scandir(self.save_dir):
            pid = temporary_pid(entry.name)
            if pid is not None and pid != os.getpid() and not pid_alive(pid):
                self.logger.info(f"Removing {entry.path}, left by an interrupted save")
                os.remove(entry.path)

    # ----- loading -----------------------------------------------------------------------
    def resume_or_load(self, path: str, *, resume: bool = True):
        """Detectron2's API: with ``resume`` and a ``last_checkpoint``, :meth:`resume_from`
        it; otherwise initialise the model from ``path`` (model weights only)."""
        self.remove_stale_temporaries()
        found = read_last_checkpoint(self.save_dir) if resume else None
        if found is not None:
            return self.resume_from(*found)
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(
                f"train.init_checkpoint={path}: file not found. Give the path (or URL) of "
                "a Detectron2 checkpoint (.pth or .pkl), or leave it empty to train from "
                "scratch."
            )
        return self.load(path, checkpointables=[])

    def resume_from(self, path: str, checkpoint: dict) -> dict:
        """Load ``checkpoint`` (the content of ``path``, from :func:`read_last_checkpoint`)
        into the model, which it must fit exactly, and into every checkpointable (e.g. the
        trainer); returns what is left (e.g. ``iteration``). ``checkpoint`` is not changed."""
        self.logger.info(f"Resuming from {path}")
        checkpoint = dict(checkpoint)
        self._loading = path
        self._require_exact_fit(super()._load_model(self._with_current_keys(checkpoint)))
        for key, obj in self.checkpointables.items():
            if key in checkpoint:
                obj.load_state_dict(checkpoint.pop(key))
        return checkpoint

    def load(self, path, *args, **kwargs):
        self._loading = path
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        """As Detectron2's; a torchvision ResNet file is mapped onto the backbone, a file of
        the authors' United-Perception code refused with how to convert it
        (:func:`efl.convert.adapt_checkpoint`)."""
        try:
            checkpoint = super()._load_file(filename)
        except Exception as e:  # truncated, not a checkpoint, pickled objects, ...
            raise CheckpointError(
                f"Cannot read train.init_checkpoint, {filename}: {_first_line(e)}. Check that "
                "the file is a complete Detectron2 checkpoint."
            ) from None
        return adapt_checkpoint(checkpoint, self.model, self._loading or filename)

    def _with_current_keys(self, checkpoint: dict) -> dict:
        """``checkpoint`` with its model's legacy ``efl.*`` keys renamed (one place)."""
        if isinstance(checkpoint.get("model"), dict):
            checkpoint["model"] = rename_legacy_loss_keys(checkpoint["model"],
                                                          self.model.state_dict().keys())
        return checkpoint

    def _load_model(self, checkpoint):  # initialising (resume_from checks the fit)
        incompatible = super()._load_model(self._with_current_keys(checkpoint))
        self._report_fresh(incompatible)
        return incompatible

    def _require_exact_fit(self, incompatible) -> None:
        problems = fit_problems(incompatible)
        if problems:
            raise CheckpointError(
                f"Cannot resume from {self._loading}: it does not fit the model ("
                + "; ".join(problems)
                + "). --resume continues the run saved in train.output_dir, so the config must "
                "be the one that run used; to start a new run with these weights use another "
                "train.output_dir and train.init_checkpoint instead."
            )

    def _report_fresh(self, incompatible) -> None:
        """Log one line per part of the model that the checkpoint did not initialise."""
        efl_prefixes = [f"{n}." for n, _ in statistics_losses(self.model)]
        shapes = {k: (c, m) for k, c, m in incompatible.incorrect_shapes}
        missing = set(incompatible.missing_keys) - set(shapes)  # fvcore lists both
        for prefix in efl_prefixes:
            keys = [k for k in self.model.state_dict() if k.startswith(prefix)]
            num_classes = self.model.get_submodule(prefix[:-1]).num_classes
            if any(k in shapes for k in keys):
                other = shapes[next(k for k in keys if k in shapes)][0]
                logger.info(
                    f"EFL state in checkpoint {self._loading} is for {other[0]} classes, the "
                    f"model has {num_classes}: {prefix[:-1]} starts from g = 1 (focal loss)."
                )
            elif any(k in missing for k in keys):
                logger.info(
                    f"EFL state not in checkpoint {self._loading}: {prefix[:-1]} starts from "
                    f"g = 1 (focal loss) for all {num_classes} classes."
                )
        def rest(keys):
            return [k for k in keys if not any(k.startswith(p) for p in efl_prefixes)]

        fresh = rest(shapes)
        if fresh:
            logger.info(
                f"Initialised fresh, shape differs from checkpoint {self._loading} (e.g. a "
                "classifier for another class count): "
                + ", ".join(f"{k} {tuple(shapes[k][0])} -> {tuple(shapes[k][1])}" for k in fresh)
            )
        fresh = rest(sorted(missing))
        if fresh:
            logger.info(
                f"Initialised fresh, not in checkpoint {self._loading}: {len(fresh)} tensors "
                f"({', '.join(_shorten(fresh))})"
            )


def read_last_checkpoint(save_dir: str) -> Optional[Tuple[str, dict]]:
    """(path, content) of the checkpoint ``save_dir/last_checkpoint`` names, read once;
    None without ``last_checkpoint``. CheckpointError if that file is missing or unreadable."""
    try:
        with open(os.path.join(save_dir, "last_checkpoint")) as f:
            path = os.path.join(save_dir, f.read().strip())
    except OSError:
        return None
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{os.path.join(save_dir, 'last_checkpoint')} names {path}, which does not exist. "
            "Restore that file, write the name of an existing checkpoint into "
            "last_checkpoint, or start without --resume."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        if not isinstance(checkpoint, dict) or "model" not in checkpoint:
            raise ValueError("no 'model' in it")
    except Exception as e:  # truncated, not a checkpoint, ...
        raise CheckpointError(
            f"Cannot read the checkpoint to resume from, {path}: {_first_line(e)}. Point "
            "last_checkpoint at an older checkpoint in the same folder, or start without "
            "--resume."
        ) from None
    return path, checkpoint


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: " + (str(error).strip().splitlines() or [""])[0]


def _shorten(keys: List[str], n: int = 6) -> List[str]:
    return keys[:n] + ([f"... {len(keys) - n} more"] if len(keys) > n else [])


def fit_problems(incompatible, exempt: Sequence[str] = (), unexpected: bool = True) -> List[str]:
    """What keeps a checkpoint from fitting a model exactly, as phrases for an error
    paragraph: each tensor of another shape (both shapes), the tensors not in the
    checkpoint, and (``unexpected``) those not in the model; keys under a prefix in
    ``exempt`` (e.g. ``"cls_loss."``) are left out. ``incompatible``: fvcore's
    ``_IncompatibleKeys``, as ``_load_model`` returns it. Empty: it fits."""
    exempt = tuple(exempt)
    shapes = [(k, c, m) for k, c, m in incompatible.incorrect_shapes if not k.startswith(exempt)]
    problems = _shorten([f"{k} has shape {tuple(c)} in the checkpoint but {tuple(m)} in the model"
                         for k, c, m in shapes])
    reshaped = {k for k, _, _ in incompatible.incorrect_shapes}  # fvcore lists them as missing too
    missing = [k for k in incompatible.missing_keys
               if k not in reshaped and not k.startswith(exempt)]
    if missing:
        problems.append(f"not in the checkpoint: {', '.join(_shorten(missing))}")
    extra = [k for k in incompatible.unexpected_keys if unexpected and not k.startswith(exempt)]
    if extra:
        problems.append(f"not in the model: {', '.join(_shorten(extra))}")
    return problems
