"""What a run leaves for the tools that read it, named once: the run record
(``run_info.json``); the EFL summary metric names and the LVIS frequency-group names are
:mod:`efl.groups`' (re-exported here).

Writers (the trainer, the loss) and readers (the training log, ``efl.report``,
``tools/demo.py``) import these instead of spelling the names themselves.
"""

import json
import os
import platform
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional

from .errors import InputError
from .groups import (ALL_CLASSES, COMMON, EFL_STATS, FREQUENCY_GROUPS, FREQUENT, GROUP_NAMES, RARE,
                     SUMMARY_GROUPS, efl_summary_key)
from .io import write_json_atomic

__all__ = [
    "FREQUENCY_GROUPS",
    "RARE",
    "COMMON",
    "FREQUENT",
    "GROUP_NAMES",
    "ALL_CLASSES",
    "SUMMARY_GROUPS",
    "EFL_STATS",
    "efl_summary_key",
    "RUN_INFO",
    "RunRecord",
    "cpu_model",
    "MissingRunFile",
    "BadRunFolder",
    "need_file",
    "read_json",
    "RESULTS",
    "run_finished",
]

def cpu_model() -> str:
    """The processor: ``model name`` of /proc/cpuinfo (Linux) with its family / model /
    stepping (a virtual machine's name may be as vague as "AMD EPYC"), e.g.
    "AMD EPYC (family 25, model 17, stepping 1)"; else what ``platform`` knows ("x86_64")."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if not key.strip():
                    break  # the first processor is enough
                info.setdefault(key.strip(), " ".join(value.split()))
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine() or "unknown"
    ids = [f"{k.replace('cpu ', '')} {info[k]}" for k in ("cpu family", "model", "stepping")
           if info.get(k)]
    return f"{name} ({', '.join(ids)})" if ids else name


class MissingRunFile(InputError, FileNotFoundError):
    """An output folder lacks a file the report needs."""


class BadRunFolder(InputError, ValueError):
    """An output folder's file cannot be used (bad JSON, missing field, wrong shape)."""


def need_file(folder: str, name: str, hint: str) -> str:
    """``folder/name``; raises :class:`MissingRunFile` with ``hint`` when it is missing."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise MissingRunFile(f"{folder} has no {name}: {hint}")
    return path


def read_json(folder: str, name: str, hint: str):
    """The JSON value of ``folder/name`` (:class:`MissingRunFile` / :class:`BadRunFolder`)."""
    path = need_file(folder, name, hint)
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRunFolder(f"{path} is not valid JSON ({e}); was it written completely?") from e


RUN_INFO = "run_info.json"


@dataclass
class RunRecord:
    """``run_info.json``: what the report tools need to read an output folder. Written by
    the trainer when a run starts; a field an older folder lacks reads as None."""

    meta_architecture: Optional[str] = None  # the model's class name, e.g. "EFLRetinaNet"
    num_classes: Optional[int] = None
    # The classification loss: {"name": class name, **hyperparameters} (DenseClassification
    # Loss.describe); None: the model holds none (stock RetinaNet / FCOS). Older folders'
    # "efl" ({gamma_b, scale_factor, alpha}) reads as an EFL / EQFL entry here.
    cls_loss: Optional[Dict[str, object]] = None
    train_datasets: Optional[List[str]] = None
    test_dataset: Optional[str] = None
    test_json: Optional[str] = None  # the test set's annotation file
    image_root: Optional[str] = None
    max_iter: Optional[int] = None
    seed: Optional[int] = None  # train.seed; -1 (or negative): not seeded
    # What varies across machines: CPU math kernels round differently on other processors
    # and with other thread counts, so runs repeat bitwise only on the same pair.
    cpu: Optional[str] = None  # cpu_model() of the machine that trained
    torch_threads: Optional[int] = None  # torch.get_num_threads() in the training process
    cpu_capability: Optional[str] = None  # the kernels torch dispatches to, e.g. "AVX512"

    @property
    def statistics_loss(self) -> Optional[Dict[str, object]]:
        """``cls_loss`` when it is a loss with per-class state that shapes it (EFL / EQFL:
        it has ``gamma_b`` and ``scale_factor``), else None. A focal loss / QFL with
        ``record_statistics`` is not one: it records g (its checkpoint's ``cls_loss.*``,
        its ``efl/pos_neg_*`` in metrics.json) but trains as plain focal loss / QFL."""
        loss = self.cls_loss or {}
        return loss if "gamma_b" in loss and "scale_factor" in loss else None

    def write(self, folder: str) -> None:
        """Write ``folder/run_info.json`` atomically (indented JSON, fields in order)."""
        os.makedirs(folder, exist_ok=True)
        write_json_atomic(os.path.join(folder, RUN_INFO), asdict(self))

    def machine(self) -> Optional[str]:
        """"<cpu>, <cpu_capability>, <n> threads" (what the run's bits depend on), or None
        for a folder written before these fields existed."""
        if self.cpu is None:
            return None
        parts = [self.cpu] + ([self.cpu_capability] if self.cpu_capability else [])
        if self.torch_threads is not None:
            parts.append(f"{self.torch_threads} thread{'s' if self.torch_threads != 1 else ''}")
        return ", ".join(parts)

    @classmethod
    def read(cls, folder: str) -> "RunRecord":
        """The record of an output folder; unknown keys are ignored.

        Raises:
            MissingRunFile: no ``run_info.json`` in ``folder``.
            BadRunFolder: the file is not a JSON object.
        """
        info = read_json(
            folder, RUN_INFO,
            "is it an output folder of train_net.py (the efl Trainer writes run_info.json "
            "when it starts)?",
        )
        if not isinstance(info, dict):
            raise BadRunFolder(f"{os.path.join(folder, RUN_INFO)} does not hold a JSON object")
        if "cls_loss" not in info and info.get("efl"):  # written before the cls_loss field
            old = info["efl"]
            name = "EqualizedFocalLoss" if old.get("alpha") is not None else "EqualizedQualityFocalLoss"
            info = {**info, "cls_loss": {"name": name, **{k: v for k, v in old.items() if v is not None}}}
        return cls(**{f.name: info[f.name] for f in fields(cls) if f.name in info})


RESULTS = "results.json"  # the trainer's last evaluation: {"iteration": N, "results": ...}


def run_finished(folder: str) -> bool:
    """Whether the training in ``folder`` ran to its end: its ``results.json`` holds the
    evaluation at ``max_iter`` of its ``run_info.json`` (the trainer evaluates once more
    after the last iteration). The one definition the demo and the sweep use."""
    try:
        with open(os.path.join(folder, RESULTS)) as f:
            iteration = json.load(f)["iteration"]
        max_iter = RunRecord.read(folder).max_iter
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return False
    return max_iter is not None and iteration == max_iter
