"""The output contracts (efl.records): the run record's file format and errors, the EFL
summary names, and the loss's formulas as the report reuses them."""

import json

import numpy as np
import pytest
import torch

from efl.errors import InputError
from efl.losses import EqualizedFocalLoss, efl_gamma, efl_pos_neg, efl_weight
from efl.records import BadRunFolder, MissingRunFile, RunRecord, cpu_model, efl_summary_key

INFO = {
    "meta_architecture": "EFLRetinaNet",
    "num_classes": 3,
    "cls_loss": {"name": "EqualizedFocalLoss", "gamma_b": 2.0, "scale_factor": 8.0, "alpha": 0.25},
    "train_datasets": ["lvis_v1_train"],
    "test_dataset": "lvis_v1_val",
    "test_json": "/data/lvis_v1_val.json",
    "image_root": "/data/coco/",
    "max_iter": 90000,
    "seed": -1,
    "cpu": "AMD EPYC (family 25, model 17, stepping 1)",
    "torch_threads": 2,
    "cpu_capability": "AVX512",
}


def test_run_record_writes_the_format_old_folders_have(tmp_path):
    RunRecord(**INFO).write(str(tmp_path))
    written = (tmp_path / "run_info.json").read_text()
    assert written == json.dumps(INFO, indent=2)  # indented JSON, fields in order
    assert RunRecord.read(str(tmp_path)) == RunRecord(**INFO)
    assert [p.name for p in tmp_path.iterdir()] == ["run_info.json"]  # no temporaries left


def test_run_record_reads_older_and_newer_folders(tmp_path):
    info = {k: v for k, v in INFO.items() if k not in ("seed", "cpu", "torch_threads", "cpu_capability")}
    (tmp_path / "run_info.json").write_text(json.dumps({**info, "added_later": 1}))
    record = RunRecord.read(str(tmp_path))
    assert record.seed is None and record.max_iter == 90000
    assert record.statistics_loss["scale_factor"] == 8.0
    assert record.cpu is None and record.machine() is None  # written before machines were


def test_run_record_reads_the_efl_field_of_older_folders(tmp_path):
    """Folders written before the ``cls_loss`` field name the loss's parameters ``efl``:
    EFL (with alpha), EQFL (alpha null), none (null)."""
    base = {k: v for k, v in INFO.items() if k != "cls_loss"}
    cases = [({"gamma_b": 2.0, "scale_factor": 8.0, "alpha": 0.25},
              {"name": "EqualizedFocalLoss", "gamma_b": 2.0, "scale_factor": 8.0, "alpha": 0.25}),
             ({"gamma_b": 2.0, "scale_factor": 4.0, "alpha": None},
              {"name": "EqualizedQualityFocalLoss", "gamma_b": 2.0, "scale_factor": 4.0}),
             (None, None)]
    for old, new in cases:
        (tmp_path / "run_info.json").write_text(json.dumps({**base, "efl": old}))
        record = RunRecord.read(str(tmp_path))
        assert record.cls_loss == new and record.statistics_loss == new
    focal = RunRecord(cls_loss={"name": "SigmoidFocalLoss", "alpha": 0.25, "gamma": 2.0})
    assert focal.statistics_loss is None  # a loss without state: no EFL state to read


def test_the_machine_a_run_trained_on_reads_as_one_line():
    assert RunRecord(**INFO).machine() == "AMD EPYC (family 25, model 17, stepping 1), AVX512, 2 threads"
    assert RunRecord(cpu="x86_64", torch_threads=1).machine() == "x86_64, 1 thread"
    name = cpu_model()
    assert name and name != "unknown" and "\n" not in name
    with open("/proc/cpuinfo") as f:
        model_names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    if model_names:  # Linux: the processor's own name comes first
        assert name.startswith(" ".join(model_names[0].split()))


@pytest.mark.parametrize("content, error, message", [
    (None, MissingRunFile, "has no run_info.json: is it an output folder of train_net.py"),
    ('{"max_iter": 3', BadRunFolder, "run_info.json is not valid JSON"),
    ("[1, 2]", BadRunFolder, "run_info.json does not hold a JSON object"),
])
def test_run_record_errors_name_the_file(tmp_path, content, error, message):
    if content is not None:
        (tmp_path / "run_info.json").write_text(content)
    with pytest.raises(error, match=message) as info:
        RunRecord.read(str(tmp_path))
    assert isinstance(info.value, InputError)


def test_summary_key_is_what_the_loss_puts():
    assert efl_summary_key("pos_neg", "r") == "efl/pos_neg_r"
    assert efl_summary_key("gamma", "all") == "efl/gamma_all"


def test_formulas_equal_the_loss_state_for_tensors_and_arrays():
    efl = EqualizedFocalLoss(4, gamma_b=2.0, scale_factor=8.0)
    efl.accumulate_statistics(torch.tensor([1.0, 2.0, 0.0, 9.0]), torch.tensor([4.0, 2.0, 1.0, 3.0]))
    assert efl.pos_neg.tolist() == [0.25, 1.0, 0.0, 1.0]
    assert torch.equal(efl.gamma, efl_gamma(efl.pos_neg, 2.0, 8.0))
    assert efl.gamma.tolist() == [8.0, 2.0, 10.0, 2.0] and efl.weight.tolist() == [4.0, 1.0, 5.0, 1.0]
    pos, neg = efl.pos_grad.numpy(), efl.neg_grad.numpy()
    g = efl_pos_neg(pos, neg)
    assert g.dtype == np.float32 and np.array_equal(g, efl.pos_neg.numpy())
    assert np.array_equal(efl_gamma(g, 2.0, 8.0), efl.gamma.numpy())
    assert np.array_equal(efl_weight(g, 2.0, 8.0), efl.weight.numpy())
