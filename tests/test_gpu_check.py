"""tools/gpu_check.py (efl.bench.gpu_check): every part at toy sizes on CPU, the AMP
checks pass with non-zero differences, and a clear error when CUDA is asked for but absent."""

import json
import subprocess
import sys

import pytest
import torch

from helpers import ROOT

from efl.bench import amp_check as amp_module
from efl.bench.gpu_check import TINY_SIZES, check_device
from efl.errors import InputError


def run_cli(*args):
    return subprocess.run([sys.executable, "tools/gpu_check.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_tiny_check_on_cpu_runs_every_part(tmp_path):
    out = tmp_path / "check.json"
    proc = run_cli("--device", "cpu", "--tiny", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    loss = result["parts"]["loss"]
    # 2 anchor layouts x 2 batch sizes x 3 precisions x 3 methods, none failed.
    assert len(loss) == 36 and not [r for r in loss if "error" in r]
    assert {r["method"] for r in loss} == {"focal_jit", "reference", "fused"}
    assert all(r["time_ratio"] == 1.0 for r in loss if r["method"] == "focal_jit")
    improved = next(r for r in loss if r["anchors"] == "improved" and r["images"] == 1)
    retina = next(r for r in loss if r["anchors"] == "retinanet" and r["images"] == 1)
    assert retina["logits"] == improved["logits"] * 9 // 2  # 9 vs 2 anchors per location
    train = result["parts"]["train"]
    assert {(r["arch"], r["loss"], r["amp"]) for r in train} == {
        (a, l, m) for a in ("retinanet", "improved") for l in ("focal", "efl")
        for m in ("off", "bfloat16")}
    assert all(r["median_s"] > 0 and r["peak_bytes"] > 0 for r in train)
    amp = result["parts"]["amp"]
    assert [r["passed"] for r in amp] == [True, True, True, True], amp
    # Not vacuous: bfloat16 forward passes differ from float32 ones, within the tolerance.
    assert amp[0]["max_abs_diff"] <= amp[0]["tolerance"] and amp[0]["finite"]
    assert 0 < max(amp[1]["pos_grad_diff"], amp[1]["neg_grad_diff"]) <= amp[1]["tolerance"]
    # the scale grew (x2 per step from 4; powers of 2: on CPU the sums come out equal)
    assert not amp[2]["comparable"] or (
        amp[2]["final_scale"] > 4 and amp[2]["max_diff"] <= amp[2]["tolerance"])
    assert amp[3]["state_unchanged"] and amp[3]["params_unchanged"] and amp[3]["scale_halved"]
    table = proc.stdout
    assert table.count("PASS") == 4 and "retinanet x2 fp16 fused" in table
    assert "improved efl amp=bfloat16" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(InputError, match="no CUDA device"):
        check_device("cuda")
    proc = run_cli("--device", "cuda", "--parts", "amp")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--device cpu --tiny" in proc.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_amp_checks_pass_on_the_gpu():
    rows = amp_module.amp_check(TINY_SIZES, torch.device("cuda"), log=lambda s: None)
    assert all(r["passed"] for r in rows), rows
