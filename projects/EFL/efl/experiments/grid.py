"""A sweep's grid: ``--set KEY=V1,V2,...`` (several: their cartesian product) x seeds, the
readable name of every run, and the manifest (``sweep.json``) that lists them.

Plain Python (no Detectron2): the report CLI reads manifests with it. The values stay the
text given on the command line; each becomes the Detectron2-style override ``KEY=VALUE``
(a value holding a comma, e.g. a list, cannot be swept this way).
"""

import itertools
import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence, Tuple

from ..errors import InputError
from ..io import write_json_atomic
from ..records import run_finished

__all__ = ["GridRun", "MANIFEST", "parse_set", "parse_seeds", "expand_grid", "write_manifest",
           "read_manifest", "settings_from_manifest"]

MANIFEST = "sweep.json"
GENERATOR = "efl.experiments.sweep"
RESERVED = ("train.output_dir", "train.seed")  # the sweep sets them per run


@dataclass
class GridRun:
    """One run of the grid: its setting (a grid point), seed and output folder."""

    setting: str  # e.g. "scale_factor=2" ("base" for a grid of seeds only)
    seed: int
    overrides: Dict[str, str] = field(default_factory=dict)  # key -> value of this point
    folder: str = ""  # the run's folder name under the sweep's --out

    @property
    def name(self) -> str:
        return self.folder

    def train_opts(self, output_dir: str) -> List[str]:
        """This run's overrides for train_net.py (after the sweep's extra ones)."""
        return ([f"{k}={v}" for k, v in self.overrides.items()]
                + [f"train.output_dir={quoted(output_dir)}", f"train.seed={self.seed}"])


def quoted(path: str) -> str:
    """``path`` as the value of a Detectron2 (Hydra) override: single-quoted when it holds
    characters the override grammar reads otherwise (``=`` of the run folders, spaces)."""
    if re.fullmatch(r"[\w/.+-]*", path):
        return path
    if "'" in path:
        raise InputError(f"the folder {path!r} holds a single quote; choose an --out without one")
    return f"'{path}'"


def parse_set(text: str) -> Tuple[str, List[str]]:
    """``"model.cls_loss.scale_factor=0,2,4,8"`` -> (key, ["0", "2", "4", "8"])."""
    key, sep, values = text.partition("=")
    key = key.strip()
    items = [v.strip() for v in values.split(",")]
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
        raise InputError(f"--set {text!r} is not KEY=V1,V2,... (e.g. --set "
                         "model.cls_loss.scale_factor=0,2,4,8)")
    if not values.strip() or any(not v for v in items):
        raise InputError(f"--set {text!r} has an empty value list or an empty value: give "
                         f"one or more comma-separated values, e.g. {key}=0,2")
    if key in RESERVED:
        raise InputError(f"--set {text!r}: the sweep sets {key} itself for every run "
                         "(--out and --seeds); leave it out")
    if len(set(items)) != len(items):
        raise InputError(f"--set {text!r} lists a value twice")
    return key, items


def parse_seeds(text: str) -> List[int]:
    """``"0,1,2"`` -> [0, 1, 2] (distinct integers >= 0)."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds {text!r} is not a list of distinct integers >= 0 "
                         "(e.g. --seeds 0,1,2)")
    return seeds


def _short_names(keys: Sequence[str]) -> Dict[str, str]:
    """The last component of each key, or the whole key where two share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _folder_name(setting: str, seed: int) -> str:
    return re.sub(r"[^\w.=+-]+", "-", setting) + f"_seed{seed}"


def expand_grid(sets: Sequence[Tuple[str, List[str]]], seeds: Sequence[int]) -> List[GridRun]:
    """The cartesian product of the ``--set`` lists (the first key varies slowest), each
    with every seed (seeds vary fastest)."""
    keys = [k for k, _ in sets]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise InputError(f"--set names {dup} more than once; give each key once with all its "
                         "values")
    short = _short_names(keys)
    runs = []
    for point in itertools.product(*[v for _, v in sets]):
        overrides = dict(zip(keys, point))
        setting = ",".join(f"{short[k]}={v}" for k, v in overrides.items()) or "base"
        for seed in seeds:
            runs.append(GridRun(setting, seed, overrides, _folder_name(setting, seed)))
    return runs


def write_manifest(out_dir: str, config_file: str, sets, seeds, extra_opts,
                   runs: Sequence[GridRun]) -> str:
    """``out_dir/sweep.json`` (atomically): the command's grid and every run's folder."""
    path = os.path.join(out_dir, MANIFEST)
    write_json_atomic(path, {
        "generator": GENERATOR, "version": 1, "config_file": os.path.abspath(config_file),
        "grid": {k: list(v) for k, v in sets}, "seeds": list(seeds),
        "extra_opts": list(extra_opts), "runs": [asdict(r) for r in runs]})
    return path


def read_manifest(path: str) -> dict:
    """A sweep's manifest from its file or its folder (InputError when it is not one)."""
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except OSError as e:
        raise InputError(f"cannot read the sweep manifest {path} ({e.strerror}): give the "
                         "--out folder of tools/sweep.py or its sweep.json") from None
    except ValueError as e:
        raise InputError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        raise InputError(f"{path} is not a manifest of tools/sweep.py (no generator "
                         f"{GENERATOR!r})")
    manifest["path"] = os.path.abspath(path)
    return manifest


def settings_from_manifest(path: str) -> Tuple[Dict[str, List[str]], List[str]]:
    """(setting -> the folders of its finished runs, in grid order; the names of the runs
    not finished)."""
    manifest = read_manifest(path)
    root = os.path.dirname(manifest["path"])
    settings: Dict[str, List[str]] = {}
    missing = []
    for run in manifest["runs"]:
        folder = os.path.join(root, run["folder"])
        if run_finished(folder):
            settings.setdefault(run["setting"], []).append(folder)
        else:
            missing.append(run["folder"])
    if not settings:
        raise InputError(f"no run of the sweep {manifest['path']} has finished yet "
                         f"({len(missing)} planned); run tools/sweep.py first")
    return settings, missing
