"""Running a grid (:mod:`.grid`): check every grid point's config before anything starts,
then train the runs one after another (``train_net.py``, a process per run, so a crash
ends that run only) or submit each as its own SLURM job (:mod:`efl.engine.slurm`).

Every run has its folder under the sweep's ``out_dir`` with a stamp (``sweep_run.json``:
config file, overrides, seed) written before it starts. Rerunning the same command:

- a run whose folder :func:`efl.records.run_finished` is skipped;
- a run that was cut (its folder has a ``last_checkpoint``) continues with ``--resume``;
- a run cut before its first checkpoint starts again from scratch;
- a folder whose stamp holds other settings, or a folder without a stamp that is not
  empty, stops the sweep before anything starts (it is not this grid's run).
"""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

from ..errors import ConfigError, InputError
from ..io import write_json_atomic
from ..records import run_finished
from .grid import MANIFEST, RESERVED, GridRun, expand_grid, write_manifest

__all__ = ["STAMP", "Sweep", "plan_sweep"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))
TRAIN_NET = os.path.join(ROOT, "train_net.py")
STAMP = "sweep_run.json"


def _check_point(cfg, extra_opts: Sequence[str], run: GridRun, local: bool) -> None:
    """Apply the extra and the grid point's overrides to a copy of ``cfg`` and check them
    as train_net.py would (unknown key, value out of range, a text where the config holds
    a number; the device only for local runs)."""
    from omegaconf import OmegaConf

    from ..engine.config_checks import apply_overrides, check_device, check_efl_hyperparameters

    cfg = copy.deepcopy(cfg)
    where = f"grid point {run.setting}" if run.overrides else "the config"
    try:
        apply_overrides(cfg, extra_opts)
        for key, value in run.overrides.items():
            before = OmegaConf.select(cfg, key, default=None)
            apply_overrides(cfg, [f"{key}={value}"])
            after = OmegaConf.select(cfg, key, default=None)
            number = (int, float)
            if (isinstance(before, number) and not isinstance(before, bool)
                    and not isinstance(after, number)):
                raise ConfigError(f"{key}={value!r} is not a number, but the config holds a "
                                  f"number there ({before!r}).")
        check_efl_hyperparameters(cfg)
        if local:
            check_device(cfg)
    except InputError as e:
        raise ConfigError(f"Bad sweep grid, {where}: {' '.join(str(e).split())} Nothing was "
                          "started.") from None


def plan_sweep(config_file: str, sets: Sequence[Tuple[str, List[str]]], seeds: Sequence[int],
               extra_opts: Sequence[str] = (), local: bool = True) -> List[GridRun]:
    """The grid's runs, every grid point's config checked (ConfigError / InputError with
    one paragraph)."""
    from detectron2.config import LazyConfig

    for opt in extra_opts:
        if opt.startswith("-") or "=" not in opt:
            raise InputError(f"{opt!r}: after the sweep's own options only Detectron2-style "
                             "overrides KEY=VALUE may follow (e.g. train.max_iter=500)")
        if opt.split("=", 1)[0].strip() in RESERVED:
            raise InputError(f"{opt!r}: the sweep sets {', '.join(RESERVED)} for every run "
                             "(--out, --seeds); leave it out")
    if not os.path.isfile(config_file):
        raise InputError(f"Config file {config_file} not found (--config-file).")
    runs = expand_grid(sets, seeds)
    cfg = LazyConfig.load(config_file)
    checked = set()
    for run in runs:
        if run.setting not in checked:
            _check_point(cfg, extra_opts, run, local)
            checked.add(run.setting)
    return runs


class Sweep:
    """A checked grid under ``out_dir``; :meth:`run_local` or :meth:`submit` it."""

    def __init__(self, config_file: str, sets, seeds, extra_opts=(), out_dir: str = "output/sweep",
                 local: bool = True, log: Callable[[str], None] = print):
        self.config_file = os.path.abspath(config_file)
        self.sets, self.seeds, self.extra_opts = list(sets), list(seeds), list(extra_opts)
        self.out_dir = os.path.abspath(out_dir)
        self.log = log
        self.runs = plan_sweep(self.config_file, self.sets, self.seeds, self.extra_opts, local)
        for run in self.runs:
            self._check_folder(run)
        self.manifest = os.path.join(self.out_dir, MANIFEST)

    def _start(self) -> None:
        """The sweep's folder and its manifest (written before the first run starts)."""
        os.makedirs(self.out_dir, exist_ok=True)
        write_manifest(self.out_dir, self.config_file, self.sets, self.seeds, self.extra_opts,
                       self.runs)

    # ----- one run's folder ------------------------------------------------------------
    def folder(self, run: GridRun) -> str:
        return os.path.join(self.out_dir, run.folder)

    def _settings(self, run: GridRun) -> dict:
        point = [f"{k}={v}" for k, v in run.overrides.items()]
        return {"config_file": self.config_file, "opts": self.extra_opts + point, "seed": run.seed}

    def _stamp(self, run: GridRun) -> Optional[dict]:
        try:
            with open(os.path.join(self.folder(run), STAMP)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _check_folder(self, run: GridRun) -> None:
        folder = self.folder(run)
        if not os.path.isdir(folder) or not os.listdir(folder):
            return
        stamp = self._stamp(run)
        if stamp is None:
            raise InputError(f"{folder} exists, is not empty and has no {STAMP}: it is not a "
                             "run of this sweep. Choose another --out or move that folder.")
        mine = self._settings(run)
        if {k: stamp.get(k) for k in mine} != mine:
            raise InputError(f"{folder} holds a run with other settings ({STAMP}: "
                             f"{stamp.get('opts')} seed {stamp.get('seed')}; this grid: "
                             f"{mine['opts']} seed {run.seed}). Choose another --out for "
                             "another grid, or delete that folder to train it again.")

    def state(self, run: GridRun) -> str:
        """"finished", "cut" (a checkpoint to resume from) or "new"."""
        folder = self.folder(run)
        if run_finished(folder):
            return "finished"
        return "cut" if os.path.isfile(os.path.join(folder, "last_checkpoint")) else "new"

    def _prepare(self, run: GridRun, state: str, **extra) -> List[str]:
        """Write the stamp (emptying a folder cut before its first checkpoint); the
        train_net.py arguments of the run."""
        folder = self.folder(run)
        if state == "new" and os.path.isdir(folder):
            shutil.rmtree(folder)
        os.makedirs(folder, exist_ok=True)
        self._write_stamp(run, **extra)
        return ((["--resume"] if state == "cut" else []) + ["--config-file", self.config_file]
                + self.extra_opts + run.train_opts(folder))

    def _write_stamp(self, run: GridRun, **extra) -> None:
        write_json_atomic(os.path.join(self.folder(run), STAMP), {**self._settings(run), **extra})

    # ----- one after another on this machine -------------------------------------------
    def run_local(self, num_gpus: int = 1) -> int:
        """Train every run that has not finished (``train_net.py --num-gpus num_gpus``);
        0 when all finished, 1 when one failed (the others still ran)."""
        self._start()
        failed = []
        for i, run in enumerate(self.runs, 1):
            state = self.state(run)
            head = f"[sweep] {i}/{len(self.runs)} {run.name}"
            if state == "finished":
                self.log(f"{head}: finished, skipped")
                continue
            args = self._prepare(run, state)
            self.log(f"{head}: {'resuming' if state == 'cut' else 'training'} -> {self.folder(run)}")
            start = time.time()
            gpus = ["--num-gpus", str(num_gpus)] if num_gpus > 1 else []
            code = _run_child([sys.executable, TRAIN_NET, *gpus, *args])
            if code != 0:
                failed.append(run.name)
                self.log(f"{head}: failed (exit {code}); see {self.folder(run)}/log.txt")
            else:
                self.log(f"{head}: done in {time.time() - start:.0f} s")
        done = sum(self.state(r) == "finished" for r in self.runs)
        self.log(f"[sweep] {done}/{len(self.runs)} runs finished; manifest {self.manifest}"
                 + (f"; failed: {', '.join(failed)} (rerun the command to retry them)"
                    if failed else ""))
        return 1 if failed else 0

    # ----- one SLURM job per run -------------------------------------------------------
    def submit(self, submit_fn=None, resubmit: bool = False, **job) -> List[Tuple[str, str]]:
        """Submit every unfinished run as its own job (``efl.engine.slurm.submit`` with
        ``job``: nodes, gpus_per_node, timeout_min, partition, cluster, ...); submitit's
        files go to ``<run folder>/slurm``. A run submitted before and not finished is
        left alone (it may still be queued) unless ``resubmit``. Returns (run, job id)."""
        if submit_fn is None:
            from ..engine.slurm import submit as submit_fn
        self._start()
        jobs = []
        for run in self.runs:
            state, stamp = self.state(run), self._stamp(run) or {}
            if state == "finished":
                self.log(f"[sweep] {run.name}: finished, skipped")
                continue
            if stamp.get("job_id") and not resubmit:
                self.log(f"[sweep] {run.name}: submitted before as job {stamp['job_id']} and not "
                         "finished; left alone (--resubmit to submit it again)")
                continue
            args = self._prepare(run, state)
            handle = submit_fn(args, job_dir=os.path.join(self.folder(run), "slurm"),
                               name=run.name, **job)
            self._write_stamp(run, job_id=str(handle.job_id))
            jobs.append((run.name, str(handle.job_id)))
            self.log(f"[sweep] {run.name}: {'resumes' if state == 'cut' else 'trains'} in "
                     f"job {handle.job_id}")
        return jobs


def _run_child(cmd: List[str]) -> int:
    """Run ``cmd``; SIGTERM / SIGINT to the sweep go on to it (train_net.py then
    checkpoints the iteration in progress and exits), then the sweep exits too."""
    proc = subprocess.Popen(cmd, cwd=ROOT)
    stop = []

    def forward(signum, frame):
        stop.append(signum)
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if stop:
        sys.exit(128 + stop[0])
    return code
