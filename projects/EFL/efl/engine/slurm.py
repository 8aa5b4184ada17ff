"""``train_net.py`` as a SLURM job, submitted with submitit.

One task per node: each task runs ``train_net.py`` (Detectron2's launcher) with
``--num-gpus <gpus per node> --num-machines <tasks> --machine-rank <task rank>
--dist-url tcp://<first node>:<port>``; the launcher starts one process per GPU (gloo CPU
processes without CUDA). The port comes from the job id, so every task (and a requeued
job) agrees on it without talking.

Timeout and preemption (docs/preemption.md): SLURM sends submitit's early warning (USR2,
``slurm_signal_delay_s`` = 120 s before the time limit) to every process of the job.
The training processes finish the iteration in progress, checkpoint it and exit with
128 + signal (:mod:`efl.engine.preemption`). In task 0, submitit's handler calls
:meth:`TrainNetJob.checkpoint`, which passes the signal on to train_net.py, waits (at
most ``stop_wait_s``) until it has exited, and returns the same command with
``--resume``; submitit then requeues the job (``scontrol requeue``). A job that SLURM
requeues itself (preemption, node failure: ``SLURM_RESTART_COUNT`` > 0) also resumes.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
import zlib
from typing import List, Optional, Sequence

from ..errors import InputError
from .preemption import exit_status, preemption_signals

__all__ = ["TrainNetJob", "split_train_args", "submit", "OWN_FLAGS"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))
TRAIN_NET = os.path.join(ROOT, "train_net.py")
OWN_FLAGS = ("--num-gpus", "--num-machines", "--machine-rank", "--dist-url")

try:
    from submitit.helpers import Checkpointable, DelayedSubmission
except ImportError:  # pragma: no cover - reported by submit()
    Checkpointable, DelayedSubmission = object, None


def split_train_args(train_args: Sequence[str]) -> argparse.Namespace:
    """Parse ``train_net.py`` arguments with Detectron2's parser; InputError if they set
    what the job sets (process counts, ranks, address) or lack ``--config-file``."""
    from detectron2.engine import default_argument_parser

    parser = default_argument_parser()
    parser.exit_on_error = False
    try:
        args = parser.parse_args(list(train_args))
    except (argparse.ArgumentError, SystemExit) as e:
        raise InputError(f"cannot parse the train_net.py arguments {list(train_args)}: {e}")
    options = [a.split("=")[0] for a in train_args[: len(train_args) - len(args.opts or [])]]
    taken = [f for f in OWN_FLAGS if f in options]
    if taken:
        raise InputError(
            f"{', '.join(taken)} in the train_net.py arguments: the job sets them from "
            "--nodes and --gpus-per-node (one task per node, ranks and address from SLURM); "
            "leave them out"
        )
    if not args.config_file:
        raise InputError("no --config-file in the train_net.py arguments; give the config to train")
    return args


def _check_config(config_file: str, overrides: Sequence[str]) -> None:
    """Config errors now rather than in the queue; not the device check (the submitting
    machine often has no GPU)."""
    from .config_checks import load_config

    load_config(config_file, overrides, device_check=False)


class TrainNetJob(Checkpointable):
    """The callable submitit runs in every task (picklable: arguments only)."""

    stop_wait_s = 90.0  # in checkpoint(): the most to wait for train_net.py's checkpoint

    def __init__(self, train_args: Sequence[str], gpus_per_node: int):
        self.train_args = list(train_args)
        self.gpus_per_node = int(gpus_per_node)
        self._process = None  # the running train_net.py (not pickled)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_process"}

    def __setstate__(self, state):
        self.__dict__.update(state, _process=None)

    def command(self, num_tasks: int, rank: int, master: str, job_id: str) -> List[str]:
        """train_net.py's command line for task ``rank`` of ``num_tasks`` (our flags first:
        the config overrides at the end are a REMAINDER); ``--resume`` added when SLURM
        requeued the job itself (``SLURM_RESTART_COUNT``)."""
        port = 20000 + zlib.crc32(str(job_id).encode()) % 20000
        args = self.train_args
        if int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0 and "--resume" not in args:
            args = ["--resume", *args]
        return [sys.executable, TRAIN_NET, "--num-gpus", str(self.gpus_per_node),
                "--num-machines", str(num_tasks), "--machine-rank", str(rank),
                "--dist-url", f"tcp://{master}:{port}", *args]

    def __call__(self) -> int:
        import submitit

        env = submitit.JobEnvironment()
        master = env.hostnames[0] if env.num_nodes > 1 else "127.0.0.1"
        cmd = self.command(env.num_tasks, env.global_rank, master, env.job_id)
        print(f"[efl.slurm] job {env.job_id} task {env.global_rank}/{env.num_tasks} on "
              f"{env.hostname}: {' '.join(cmd)}", flush=True)
        self._process = subprocess.Popen(cmd, cwd=ROOT)
        while self._process.poll() is None:  # not wait(): checkpoint() may run meanwhile
            time.sleep(0.5)
        code = self._process.returncode
        if code in {exit_status(s) for s in preemption_signals()}:
            print(f"[efl.slurm] train_net.py stopped on {signal.Signals(code - 128).name} "
                  "after writing a checkpoint; the requeued job resumes from it", flush=True)
            return code
        if code != 0:
            raise RuntimeError(f"train_net.py exited with status {code} in task "
                               f"{env.global_rank} of job {env.job_id}; see its log above")
        return code

    def checkpoint(self, *args, **kwargs):
        """Called by submitit's signal handler before it requeues the job: pass the early
        warning on to train_net.py, wait until it has written its checkpoint and exited
        (at most ``stop_wait_s``), then the same command with ``--resume``."""
        process = self._process
        if process is not None and process.returncode is None:
            os.kill(process.pid, preemption_signals()[-1])
            deadline = time.time() + self.stop_wait_s
            # waitid(WNOWAIT) leaves the exit status to Popen (a poll() may be under way).
            while time.time() < deadline and not os.waitid(
                    os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                time.sleep(0.2)
        resumed = self.train_args if "--resume" in self.train_args else ["--resume", *self.train_args]
        return DelayedSubmission(TrainNetJob(resumed, self.gpus_per_node))


def submit(train_args: Sequence[str], nodes: int, gpus_per_node: int, job_dir: str,
           timeout_min: int, partition: Optional[str] = None, cluster: Optional[str] = None,
           cpus_per_gpu: int = 8, name: str = "efl", max_timeouts: int = 10):
    """Submit ``train_net.py train_args`` on ``nodes`` x ``gpus_per_node``; the job.

    ``cluster``: None (SLURM if ``sbatch`` is found, else local), "slurm", or "local"
    (this machine: ``nodes`` tasks, for trying the job on CPU; not for GPUs)."""
    try:
        import submitit
    except ImportError:
        raise InputError("submitit is not installed: pip install submitit (on PyPI)")
    if nodes < 1 or gpus_per_node < 1 or timeout_min < 1:
        raise InputError(f"--nodes ({nodes}), --gpus-per-node ({gpus_per_node}) and --timeout "
                         f"({timeout_min} minutes) must be >= 1")
    args = split_train_args(train_args)
    _check_config(args.config_file, args.opts)
    executor = submitit.AutoExecutor(folder=job_dir, cluster=cluster,
                                     slurm_max_num_timeout=max_timeouts)
    local = executor.cluster != "slurm"
    params = dict(name=name, timeout_min=timeout_min, gpus_per_node=0 if local else gpus_per_node,
                  tasks_per_node=nodes if local else 1, nodes=1 if local else nodes,
                  cpus_per_task=max(1, cpus_per_gpu * gpus_per_node // (nodes if local else 1)))
    if not local:
        params.update(slurm_partition=partition, slurm_signal_delay_s=120)
        if partition is None:
            params.pop("slurm_partition")
    executor.update_parameters(**params)
    return executor.submit(TrainNetJob(train_args, gpus_per_node))
