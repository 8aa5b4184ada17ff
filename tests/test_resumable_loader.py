"""The resumable training loader: the batch of iteration i is a pure function of
(seed, i), whatever the start iteration and the number of worker processes; RNG states
survive a weights-only checkpoint round trip."""

import io
import itertools
import random

import numpy as np
import pytest
import torch
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler

from efl.data.resumable import ResumableTrainLoader
from efl.errors import InputError
from efl.rng import get_rng_state, set_rng_state


def records(n=30):
    """Images of two aspect groups; a mapper that flips a coin with each generator."""
    return [{"image_id": i, "width": 64 if i % 3 else 32, "height": 48} for i in range(n)]


def coin_mapper(d):
    return (d["image_id"], d["width"] > d["height"], random.random(), float(np.random.rand()),
            float(torch.rand(())))


def take(loader, start, n):
    loader.start_iter = start
    return list(itertools.islice(iter(loader), n))


@pytest.mark.parametrize("sampler", [
    TrainingSampler(30, seed=7),
    RepeatFactorTrainingSampler(torch.linspace(1, 2.5, 30), seed=7),  # stochastic rounding
])
def test_resumed_stream_equals_uninterrupted_stream(sampler):
    loader = ResumableTrainLoader(records(), coin_mapper, sampler, 4, num_workers=0)
    state = get_rng_state()
    full = take(loader, 0, 40)  # several epochs
    assert_same_rng(state, get_rng_state())  # loading leaves the process's generators alone
    for batch in full:
        assert len(batch) == 4 and len({x[1] for x in batch}) == 1  # one aspect group
    assert take(loader, 23, 17) == full[23:]
    workers = ResumableTrainLoader(records(), coin_mapper, sampler, 4, num_workers=2)
    assert take(workers, 23, 17) == full[23:]  # the same in worker processes
    loader.load_state_dict({"seed": 8})
    assert take(loader, 0, 40) != full


def test_epochs_cover_the_dataset_and_change_order():
    loader = ResumableTrainLoader(records(32), lambda d: d["image_id"], TrainingSampler(32, seed=1),
                                  4, aspect_ratio_grouping=False)
    epochs = [sum(take(loader, 8 * e, 8), []) for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(32)) and epochs[0] != epochs[1]


def test_batch_size_must_fit():
    with pytest.raises(InputError, match=r"no batch of total_batch_size=64 images"):
        ResumableTrainLoader(records(), coin_mapper, TrainingSampler(30, seed=0), 64)


def assert_same_rng(a, b):
    assert torch.equal(a["torch"], b["torch"])
    assert torch.equal(a["numpy"]["keys"], b["numpy"]["keys"])
    assert a["numpy"]["pos"] == b["numpy"]["pos"]
    assert torch.equal(a["python"]["state"], b["python"]["state"])


def test_rng_state_round_trip_through_weights_only_checkpoint():
    random.random(), np.random.randn(), torch.randn(1)  # any state, numpy's cached gaussian too
    buf = io.BytesIO()
    torch.save({"rng": get_rng_state()}, buf)
    expected = (random.random(), np.random.randn(), float(torch.randn(())))
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True)["rng"])
    assert (random.random(), np.random.randn(), float(torch.randn(()))) == expected
