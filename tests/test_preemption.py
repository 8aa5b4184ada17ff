"""Preemption (docs/preemption.md): SIGTERM or SLURM's early warning (USR2) sent to a
running training makes it finish the iteration in progress, write its checkpoint (a
second signal during that save changes nothing), exit with 128 + signal, and --resume
ends with the weights, optimizer and EFL state of an uninterrupted run, bitwise; with two
processes a signal that reaches one rank stops both after the same iteration."""

import json
import os
import re
import signal
import time

import pytest
import torch

from helpers import tiny_lazy_config
from runs import assert_same, dataset_root, last_checkpoint, train_net

# No periodic checkpoint before the end: the one to resume from is the preemption's.
OPTS = ["train.max_iter=40", "train.checkpointer.period=1000"]
ITER_LINE = re.compile(r"d2\.utils\.events\]:.* iter: (\d+) ")


def read_until(proc, pattern, seen):
    """Read ``proc``'s output lines into ``seen`` until one matches ``pattern``; the match."""
    for line in proc.stdout:
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} before the process ended:\n"
                         + "".join(seen[-40:]))


def logged_iterations(out):
    """Iterations with training metrics in ``out/metrics.json``."""
    with open(os.path.join(out, "metrics.json")) as f:
        return [r["iteration"] for r in map(json.loads, f) if "total_loss" in r]


def signal_group(proc, signum):
    os.killpg(proc.pid, signum)  # as SLURM: every process of the job step


@pytest.mark.slow
def test_sigterm_then_resume_equals_uninterrupted_run(tiny_dataset, tmp_path):
    root = dataset_root(tiny_dataset)
    full, stopped = str(tmp_path / "full"), str(tmp_path / "stopped")
    uninterrupted = train_net(full, *OPTS, dataset_root=root, wait=False)  # meanwhile:
    # Checkpoints written in 64 KiB pieces, 10 ms apart (~23 MB: seconds), so the second
    # signal lands inside the save.
    proc = train_net(stopped, *OPTS, dataset_root=root, wait=False, env={"EFL_SLOW_SAVE": "0.01"})
    seen = []
    try:
        read_until(proc, r"iter: 5 ", seen)
        signal_group(proc, signal.SIGTERM)
        sent = time.time()
        read_until(proc, r"Saving checkpoint to .*model_\d{7}\.pth", seen)
        time.sleep(0.2)
        signal_group(proc, signal.SIGTERM)  # during the save
        signal_group(proc, signal.SIGUSR2)
        print(f"second and third signal {time.time() - sent:.2f} s after the first")
    finally:
        output, _ = proc.communicate(timeout=600)
        output = "".join(seen) + output
        full_output, _ = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, full_output[-3000:]
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "3 signal(s) here" in output, output[-3000:]
    assert not os.path.exists(os.path.join(stopped, "model_final.pth")), "signalled too late"
    assert not [p for p in os.listdir(stopped) if ".tmp-" in p]

    # The checkpoint is of the last iteration that ran: no iteration lost.
    name = last_checkpoint(stopped)
    saved = int(name[len("model_"):-len(".pth")])
    ran = logged_iterations(stopped)
    assert ran == list(range(ran[-1] + 1))
    print(f"iterations lost at the signal: {ran[-1] - saved} (last iteration run {ran[-1]}, "
          f"checkpoint {name})")
    assert saved == ran[-1]
    ckpt = torch.load(os.path.join(stopped, name), weights_only=True)
    assert ckpt["iteration"] == saved and "ResumeState" in ckpt["trainer"]["hooks"]

    code, output = train_net(stopped, *OPTS, flags=["--resume"], dataset_root=root)
    assert code == 0, output[-3000:]
    assert f"Starting training from iteration {saved + 1}" in output
    a = torch.load(os.path.join(full, "model_final.pth"), weights_only=True)
    b = torch.load(os.path.join(stopped, "model_final.pth"), weights_only=True)
    assert a["model"]["cls_loss.pos_grad"].sum() > 0 and a["trainer"]["_trainer"]["optimizer"]["state"]
    assert_same(a, b)  # model + EFL state, optimizer, scheduler, RNG states, normaliser, seed


@pytest.mark.slow
def test_signal_to_one_of_two_ranks_stops_both_after_the_same_iteration(tiny_dataset, tmp_path):
    root = dataset_root(tiny_dataset)
    opts = [*OPTS, "dataloader.train.total_batch_size=4", "dataloader.train.num_workers=0"]
    full, stopped = str(tmp_path / "full"), str(tmp_path / "stopped")
    proc = train_net(stopped, *opts, flags=["--num-gpus", "2"], dataset_root=root, wait=False)
    seen = []
    try:
        read_until(proc, r"iter: 5 ", seen)
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            children = sorted(int(p) for p in f.read().split())
        workers = [p for p in children if b"spawn_main" in open(f"/proc/{p}/cmdline", "rb").read()]
        assert len(workers) == 2, children
        os.kill(workers[1], signal.SIGUSR2)  # rank 1 only (spawned after rank 0)
    finally:
        output, _ = proc.communicate(timeout=600)
        output = "".join(seen) + output
    assert proc.returncode == 128 + signal.SIGUSR2, output[-3000:]
    log = open(os.path.join(stopped, "log.txt")).read()  # rank 0's
    match = re.search(r"SIGUSR2 received by another rank: stopped after iteration (\d+)", log)
    assert match, log[-3000:]
    saved = int(match.group(1))
    assert last_checkpoint(stopped) == f"model_{saved:07d}.pth"
    assert logged_iterations(stopped)[-1] == saved
    ranks = torch.load(os.path.join(stopped, f"model_{saved:07d}.pth"),
                       weights_only=True)["trainer"]["hooks"]["ResumeState"]["ranks"]
    assert len(ranks) == 2  # both ranks' RNG states, gathered at the stop

    code, output = train_net(stopped, *opts, flags=["--num-gpus", "2", "--resume"],
                             dataset_root=root)
    assert code == 0, output[-3000:]
    code, output = train_net(full, *opts, flags=["--num-gpus", "2"], dataset_root=root)
    assert code == 0, output[-3000:]
    a = torch.load(os.path.join(full, "model_final.pth"), weights_only=True)
    b = torch.load(os.path.join(stopped, "model_final.pth"), weights_only=True)
    assert_same(a, b)


@pytest.mark.slow
def test_in_process_training_restores_the_signal_handlers(tiny_dataset, tmp_path):
    from detectron2.engine import HookBase

    from efl.engine import Preempted, Trainer

    class SignalAt(HookBase):
        def after_step(self):
            if self.trainer.iter == 1:  # after this iteration's preemption check
                os.kill(os.getpid(), signal.SIGUSR2)

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    trainer = Trainer(tiny_lazy_config("efl", tiny_dataset, str(tmp_path), max_iter=6))
    trainer.register_hooks([SignalAt()])
    trainer.resume_or_load(resume=False)
    with pytest.raises(Preempted) as info:
        trainer.train()
    assert (info.value.code, info.value.iteration) == (128 + signal.SIGUSR2, 2)
    assert {s: signal.getsignal(s) for s in before} == before
    assert last_checkpoint(str(tmp_path)) == "model_0000002.pth"  # not a periodic one (2)
