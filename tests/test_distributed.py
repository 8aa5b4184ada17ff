"""``train_net.py --num-gpus 2`` on CPU (gloo): the EFL state is identical on both ranks,
and equals what one process computes from the same global batch."""

import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from helpers import tiny_lazy_config
from runs import assert_same, dataset_root, train_net

EFL_KEYS = ("cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg")


def step_statistics(model, record):
    """(positives, negatives) that one rank's training step hands to the EFL state,
    recomputed in this process from the rank's recorded batch and pre-step state."""
    model.load_state_dict(record["state"])
    if record["loss_normalizer"] is None:
        model.__dict__.pop("loss_normalizer", None)
    else:
        model.loss_normalizer = record["loss_normalizer"]
    inputs = []
    for x in record["inputs"]:
        instances = Instances(tuple(x["image"].shape[1:]))
        instances.gt_boxes = Boxes(x["boxes"])
        instances.gt_classes = x["classes"]
        inputs.append({"image": x["image"], "instances": instances, "height": x["height"],
                       "width": x["width"]})
    captured = []
    model.cls_loss.accumulate_statistics = lambda pos, neg: captured.append((pos.clone(), neg.clone()))
    model.train()
    with EventStorage(0):
        losses = model(inputs)
    sum(losses.values()).backward()
    del model.cls_loss.accumulate_statistics
    (stats,) = captured
    return stats


@pytest.mark.slow
def test_two_cpu_processes_hold_the_all_reduced_efl_state(tiny_dataset, tmp_path):
    record_dir, out = tmp_path / "record", tmp_path / "out"
    record_dir.mkdir()
    code, output = train_net(
        str(out), "model._target_=faults.RecordingEFLRetinaNet", f"model.record_dir={record_dir}",
        "train.max_iter=2", "dataloader.train.total_batch_size=4", "dataloader.train.num_workers=0",
        flags=["--num-gpus", "2"], dataset_root=dataset_root(tiny_dataset),
    )
    assert code == 0, output[-3000:]
    assert "Rank of current process: 0. World size: 2" in output
    assert "EFL state identical on all 2 ranks at iteration 2 (3 tensors)" in output
    final = torch.load(out / "model_final.pth", weights_only=True)

    cfg = tiny_lazy_config("efl", tiny_dataset, str(out))
    model = instantiate(cfg.model)
    cfg.dataloader.train.total_batch_size = 4
    single = instantiate(cfg.dataloader.train)  # this process: world size 1
    single.load_state_dict(final["trainer"]["data_loader"])
    for it in (0, 1):
        ranks = [torch.load(record_dir / f"rank{r}_iter{it}.pth", weights_only=False) for r in (0, 1)]
        # Same weights and EFL state on both ranks before the step.
        for key, value in ranks[0]["state"].items():
            if "running_" not in key and "num_batches_tracked" not in key:  # BN stats are per rank
                assert torch.equal(value, ranks[1]["state"][key]), key
        # The two ranks' batches together are the global batch a single process reads.
        batch = single.dataset.make_batch(it)
        assert [x["image_id"] for r in ranks for x in r["inputs"]] == [x["image_id"] for x in batch]
        for x, y in zip([x for r in ranks for x in r["inputs"]], batch):
            assert torch.equal(x["image"], y["image"])  # same random flips
        # The state after the step is the pre-step state plus the sum of both ranks'
        # statistics, recomputed here one rank's batch at a time (BatchNorm statistics and
        # the loss normaliser are per rank, as in the run), bitwise.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each rank (OMP_NUM_THREADS=1, see runs.train_net)
        try:  # CPU kernels may sum in another order with another thread count
            (p0, n0), (p1, n1) = (step_statistics(model, r) for r in ranks)
        finally:
            torch.set_num_threads(threads)
        before = ranks[0]["state"]
        pos, neg = before["cls_loss.pos_grad"] + (p0 + p1), before["cls_loss.neg_grad"] + (n0 + n1)
        expected = {"cls_loss.pos_grad": pos, "cls_loss.neg_grad": neg,
                    "cls_loss.pos_neg": (pos / (neg + 1e-10)).clamp(0, 1)}
        after = ([torch.load(record_dir / f"rank{r}_iter1.pth", weights_only=False)["state"]
                  for r in (0, 1)] if it == 0 else [final["model"]])
        for state in after:  # both ranks after step 0; the final checkpoint after step 1
            assert_same({k: state[k] for k in EFL_KEYS}, expected, f"EFL state after step {it}")
    assert final["model"]["cls_loss.pos_neg"].min() < 1
