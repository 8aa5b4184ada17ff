"""LVIS v1 glue: a missing dataset stops train_net.py with one clear message (no stack
trace), r/c/f groups of LVIS v1, and repeat-factor sampling with both roundings."""

import os
import subprocess
import sys

import pytest
import torch

from efl.data.lvis import build_train_loader, frequency_groups
from helpers import ROOT


@pytest.mark.slow
def test_missing_lvis_files_give_one_clear_error(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "nowhere"))
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file",
         "configs/LVISv1/retinanet_R_50_FPN_2x_efl.py",
         f"train.output_dir={tmp_path / 'out'}", "train.device=cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-2000:]
    expected = os.path.join(str(tmp_path / "nowhere"), "lvis", "lvis_v1_train.json")
    assert expected in output
    assert "DETECTRON2_DATASETS" in output
    assert "Traceback" not in output
    assert not os.path.exists(tmp_path / "out" / "model_final.pth")


def test_lvis_v1_frequency_groups():
    groups = frequency_groups("lvis_v1_train")
    assert len(groups) == 1203
    assert (groups.count("r"), groups.count("c"), groups.count("f")) == (337, 461, 405)


def _records():
    """Image 0 holds a class seen in 1 of 100 images; the other 99 share one class."""
    recs = [{"file_name": "x", "annotations": [{"category_id": 1}]}]
    recs += [{"file_name": "x", "annotations": [{"category_id": 0}]} for _ in range(99)]
    return recs


def test_repeat_factor_sampling_rounding():
    # t = 0.04: class 1 has f = 0.01 -> r = sqrt(0.04 / 0.01) = 2; class 0 f = 0.99 -> 1.
    for rounding, expected in (("ceil", 2), ("stochastic", 2)):
        loader = build_train_loader(
            dataset=_records(), mapper=lambda d: d, total_batch_size=1,
            repeat_thresh=0.04, repeat_rounding=rounding, aspect_ratio_grouping=False, seed=0,
        )
        factors = loader.dataset.sampler._int_part + loader.dataset.sampler._frac_part
        assert factors[0].item() == expected and factors[1:].eq(1).all()
    # t = 0.0225: r = 1.5 for image 0 -> ceil gives 2 every epoch, stochastic 1 or 2.
    ceil = build_train_loader(dataset=_records(), mapper=lambda d: d, total_batch_size=1,
                              repeat_thresh=0.0225, repeat_rounding="ceil",
                              aspect_ratio_grouping=False, seed=0)
    sampler = ceil.dataset.sampler
    assert sampler._int_part[0].item() == 2 and sampler._frac_part[0].item() == 0
    stochastic = build_train_loader(dataset=_records(), mapper=lambda d: d, total_batch_size=1,
                                    repeat_thresh=0.0225, aspect_ratio_grouping=False, seed=0)
    assert torch.isclose(stochastic.dataset.sampler._frac_part[0], torch.tensor(0.5))
