"""BatchNorm statistics averaged over processes before evaluation (efl.engine.norm_sync,
the YOLOX-IP recipe's ``runtime.async_norm``), with real torch.distributed (gloo, 2 CPU
processes)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from efl.engine.norm_sync import all_reduce_norm
from helpers import free_port
from runs import dataset_root, train_net


def small_net(rank: int) -> torch.nn.Module:
    """Conv + BatchNorm2d + Linear + BatchNorm1d with rank-dependent statistics, and a
    buffer outside any norm."""
    torch.manual_seed(0)  # the same weights on every rank
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.Flatten(), torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5))
    net.register_buffer("other", torch.full((3,), float(rank)))
    g = torch.Generator().manual_seed(10 + rank)
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=g))
            bn.num_batches_tracked.fill_(3 + 4 * rank)  # 3 and 7: mean 5
    return net


def _worker(rank, world_size, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        net = small_net(rank)
        count = all_reduce_norm(net)
        torch.save({"count": count, "state": net.state_dict()}, os.path.join(out_dir, f"{rank}.pth"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_batchnorm_state_is_the_mean_over_processes_and_nothing_else_changes(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    saved = [torch.load(tmp_path / f"{r}.pth", weights_only=True) for r in range(2)]
    before = [small_net(r).state_dict() for r in range(2)]
    assert saved[0]["count"] == 10  # 2 norms x (weight, bias, mean, var, count)
    for name, value in saved[0]["state"].items():
        assert torch.equal(value, saved[1]["state"][name]) or name == "other", name
        if name.startswith(("1.", "4.")):
            if value.is_floating_point():
                mean = (before[0][name].double() + before[1][name].double()) / 2
                torch.testing.assert_close(value, mean.float(), rtol=0, atol=0)
            else:
                assert value.item() == 5, name
        else:  # conv, linear, the buffer outside the norms: as they were on each rank
            for r in range(2):
                assert torch.equal(saved[r]["state"][name], before[r][name]), name
    assert not torch.equal(before[0]["1.running_mean"], before[1]["1.running_mean"])


def test_one_process_changes_nothing():
    net = small_net(1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert all_reduce_norm(net) == 0
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.slow
def test_train_net_with_two_processes_averages_at_each_evaluation(tiny_dataset, tmp_path):
    """train_net.py --num-gpus 2 (gloo) with train.all_reduce_norm: the hook runs the real
    collective inside DDP training, at the evaluation iterations (2) and the last (4)."""
    code, output = train_net(
        str(tmp_path / "out"), "train.max_iter=4", "train.eval_period=2",
        "train.all_reduce_norm=True", "dataloader.train.total_batch_size=4",
        "dataloader.train.num_workers=0", flags=["--num-gpus", "2"],
        dataset_root=dataset_root(tiny_dataset))
    assert code == 0, output[-3000:]
    for it in (2, 4):
        assert f"BatchNorm state averaged over 2 processes after iteration {it} (" in output
    assert "after iteration 3 (" not in output
