"""tools/submit_slurm.py (efl.engine.slurm): the task's command line, requeue with
--resume (after passing the early warning on to train_net.py), argument errors, and a
job of 2 tasks on submitit's local executor (CPU, gloo) whose EFL state equals a
``train_net.py --num-gpus 2`` run's."""

import signal
import subprocess
import sys

import pytest
import torch
from detectron2.engine import default_argument_parser

from helpers import ROOT
from runs import CONFIG, assert_same, dataset_root, train_net

from efl.engine.slurm import TrainNetJob, split_train_args, submit
from efl.errors import InputError

EFL_KEYS = ("cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg")


def test_each_task_runs_the_launcher_with_its_rank_and_the_same_address():
    job = TrainNetJob(["--config-file", "c.py", "train.max_iter=5"], gpus_per_node=8)
    cmds = [job.command(num_tasks=4, rank=r, master="node017", job_id="12345") for r in range(4)]
    for r, cmd in enumerate(cmds):
        assert cmd[1].endswith("train_net.py")
        args = default_argument_parser().parse_args(cmd[2:])  # as train_net.py parses it
        assert (args.num_gpus, args.num_machines, args.machine_rank) == (8, 4, r)
        assert args.opts == ["train.max_iter=5"]  # overrides stay overrides
    assert len({c[c.index("--dist-url") + 1] for c in cmds}) == 1
    assert cmds[0][cmds[0].index("--dist-url") + 1].startswith("tcp://node017:")
    other = job.command(num_tasks=4, rank=0, master="node017", job_id="12346")
    assert other[other.index("--dist-url") + 1] != cmds[0][cmds[0].index("--dist-url") + 1]


def test_timeout_requeues_the_same_command_with_resume():
    job = TrainNetJob(["--config-file", "c.py", "train.max_iter=5"], gpus_per_node=2)
    again = job.checkpoint()
    resumed = again.function
    assert isinstance(resumed, TrainNetJob) and resumed.gpus_per_node == 2
    assert resumed.train_args == ["--resume", "--config-file", "c.py", "train.max_iter=5"]
    assert default_argument_parser().parse_args(resumed.command(1, 0, "h", "1")[2:]).resume
    assert resumed.checkpoint().function.train_args == resumed.train_args  # once


def test_a_job_requeued_by_slurm_itself_resumes(monkeypatch):
    job = TrainNetJob(["--config-file", "c.py"], gpus_per_node=1)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert "--resume" not in job.command(1, 0, "h", "1")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")  # preempted / node failure, requeued
    assert "--resume" in job.command(1, 0, "h", "1")


def test_early_warning_is_passed_on_and_the_checkpoint_awaited(tmp_path):
    """submitit's handler calls checkpoint() before requeueing: train_net.py (here a
    stand-in that takes 1 s to 'save' on USR2) gets the signal and has exited when
    checkpoint() returns."""
    saved = tmp_path / "saved"
    child = subprocess.Popen([sys.executable, "-c", (
        "import pathlib, signal, sys, time\n"
        "def stop(signum, frame):\n"
        "    time.sleep(1); pathlib.Path(sys.argv[1]).write_text('done'); sys.exit(128 + signum)\n"
        "signal.signal(signal.SIGUSR2, stop)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"), str(saved)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        job = TrainNetJob(["--config-file", "c.py"], gpus_per_node=1)
        job._process = child
        resumed = job.checkpoint().function
        assert saved.read_text() == "done" and child.poll() == 128 + signal.SIGUSR2
        assert resumed.train_args[0] == "--resume" and resumed._process is None
    finally:
        child.kill()
        child.communicate()


@pytest.mark.parametrize("argv, words", [
    (["--config-file", CONFIG, "--num-gpus", "2"], "--num-gpus"),
    (["--config-file", CONFIG, "--dist-url=tcp://h:1"], "--dist-url"),
    (["train.max_iter=5"], "--config-file"),
])
def test_flags_the_job_sets_are_refused(argv, words):
    with pytest.raises(InputError, match=words):
        split_train_args(argv)


def test_cli_reports_a_bad_config_key_before_submitting(tmp_path):
    proc = subprocess.run(
        [sys.executable, "tools/submit_slurm.py", "--cluster", "local", "--job-dir", str(tmp_path),
         "--config-file", "configs/Synthetic/retinanet_efl.py", "train.max_iterr=5"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "train.max_iter" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing submitted


@pytest.mark.slow
def test_two_local_tasks_train_as_train_net_with_two_processes(tiny_dataset, tmp_path, monkeypatch):
    root = dataset_root(tiny_dataset)
    opts = ["train.max_iter=2", "dataloader.train.total_batch_size=4",
            "dataloader.train.num_workers=0"]
    monkeypatch.setenv("EFL_TINY_DATASET", root)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as runs.train_net's processes
    job = submit(["--config-file", CONFIG, *opts, f"train.output_dir={tmp_path / 'job'}"],
                 nodes=2, gpus_per_node=1, job_dir=str(tmp_path / "submitit"), timeout_min=10,
                 cluster="local")
    code, output = train_net(str(tmp_path / "ref"), *opts, flags=["--num-gpus", "2"],
                             dataset_root=root)
    assert code == 0, output[-3000:]
    try:
        job.results()
    finally:
        logs = "".join(p.read_text() for p in sorted((tmp_path / "submitit").glob("*_log.*")))
    assert job.state in ("DONE", "FINISHED", "COMPLETED"), logs[-3000:]
    assert logs.count("[efl.slurm] job") == 2
    assert "--num-machines 2 --machine-rank 1" in logs
    log = (tmp_path / "job" / "log.txt").read_text()
    assert "World size: 2" in logs + log
    assert "EFL state identical on all 2 ranks at iteration 2 (3 tensors)" in log
    got = torch.load(tmp_path / "job" / "model_final.pth", weights_only=True)["model"]
    ref = torch.load(tmp_path / "ref" / "model_final.pth", weights_only=True)["model"]
    assert got["cls_loss.pos_neg"].min() < 1  # the state moved
    assert_same({k: got[k] for k in EFL_KEYS}, {k: ref[k] for k in EFL_KEYS}, "EFL state")
