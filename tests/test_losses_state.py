"""The EFL state across workers (real torch.distributed, gloo on CPU) and through
Detectron2's DetectionCheckpointer."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.checkpoint import DetectionCheckpointer

from efl import EqualizedFocalLoss
from helpers import free_port

K = 9
STEPS = 3


def rank_batch(rank, step):
    """Different data on every rank and step: (logits (M, K), targets (M, K))."""
    gen = torch.Generator().manual_seed(1000 * rank + step)
    m = 60 + 20 * rank
    logits = torch.randn(m, K, generator=gen) * 2 - 1
    labels = torch.randint(0, K, (m,), generator=gen)
    targets = torch.zeros(m, K)
    fg = torch.rand(m, generator=gen) < 0.3
    targets[fg, labels[fg]] = 1
    return logits, targets


def _worker(rank, world_size, port, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        efl = EqualizedFocalLoss(K)
        for step in range(STEPS):
            logits, targets = rank_batch(rank, step)
            logits.requires_grad_(True)
            efl(logits, targets, normalizer=4.0).backward()
        torch.save(efl.state_dict(), os.path.join(out_dir, f"rank{rank}.pth"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_statistics_are_all_reduced_across_workers(tmp_path):
    world_size = 2
    mp.spawn(_worker, args=(world_size, free_port(), str(tmp_path)), nprocs=world_size)
    states = [torch.load(tmp_path / f"rank{r}.pth") for r in range(world_size)]
    for name in ("pos_grad", "neg_grad", "pos_neg"):
        assert torch.equal(states[0][name], states[1][name]), name

    # Single process: each rank's own statistics from the same shared state, summed.
    expected = EqualizedFocalLoss(K)
    for step in range(STEPS):
        delta_pos, delta_neg = torch.zeros(K), torch.zeros(K)
        for rank in range(world_size):
            local = EqualizedFocalLoss(K)
            local.load_state_dict(expected.state_dict())
            logits, targets = rank_batch(rank, step)
            logits.requires_grad_(True)
            local(logits, targets, normalizer=4.0).backward()
            delta_pos += local.pos_grad - expected.pos_grad
            delta_neg += local.neg_grad - expected.neg_grad
        expected.accumulate_statistics(delta_pos, delta_neg)
    for name in ("pos_grad", "neg_grad", "pos_neg"):
        torch.testing.assert_close(states[0][name], getattr(expected, name), rtol=1e-5, atol=1e-8)
    # Each rank alone would have a different state: the reduction really happened.
    alone = EqualizedFocalLoss(K)
    for step in range(STEPS):
        logits, targets = rank_batch(0, step)
        logits.requires_grad_(True)
        alone(logits, targets, normalizer=4.0).backward()
    assert not torch.allclose(alone.pos_grad, states[0]["pos_grad"])


class _HeadWithEFL(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.cls = torch.nn.Linear(4, K)
        self.efl = EqualizedFocalLoss(K)


def test_state_survives_detection_checkpointer(tmp_path):
    model = _HeadWithEFL()
    for step in range(2):
        logits, targets = rank_batch(0, step)
        model.efl(model.cls(logits[:, :4]), targets).backward()
    assert model.efl.pos_neg.min() < 1
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")

    restored = _HeadWithEFL()
    DetectionCheckpointer(restored).load(str(tmp_path / "model_final.pth"))
    for name in ("pos_grad", "neg_grad", "pos_neg"):
        assert torch.equal(getattr(restored.efl, name), getattr(model.efl, name)), name
    logits, targets = rank_batch(0, 5)
    with torch.no_grad():
        assert torch.equal(
            restored.efl(restored.cls(logits[:, :4]), targets),
            model.efl(model.cls(logits[:, :4]), targets),
        )
