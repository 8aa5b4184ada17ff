"""tools/predict.py and tools/export_model.py on a briefly trained tiny EFLRetinaNet:
outputs, agreement with the eager model, and bad input (unreadable images, weights that
do not fit, unknown format, missing weights) reported in one paragraph."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image

from helpers import ROOT
from deploy_models import trained
from efl import compat
from efl.predict import expand_inputs

CONFIG = os.path.join(ROOT, "tests", "configs", "tiny_efl.py")  # = tiny_deploy_config("efl_retinanet")


def run_tool(tool, *args, prefix):
    env = dict(os.environ, EFL_TINY_DATASET=os.path.dirname(MetadataCatalog.get(f"{prefix}_train").json_file),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join("tools", tool), "--config-file", CONFIG, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def checkpoint(tiny_dataset, tmp_path_factory):
    root = str(tmp_path_factory.getbasetemp() / "deploy_models")
    _, model, path = trained("efl_retinanet", tiny_dataset, root)
    return model, path


def test_inputs_are_files_folders_and_globs(tmp_path):
    for name in ("b.jpg", "a.png", "notes.txt", "c.JPEG"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"")
    folder, pattern = str(tmp_path), str(tmp_path / "sub" / "*.png")
    assert expand_inputs([folder, pattern, "missing.jpg", folder + "/a.png"]) == [
        f"{folder}/a.png", f"{folder}/b.jpg", f"{folder}/c.JPEG", f"{folder}/sub/d.png",
        "missing.jpg"]


def test_quiet_inference_logs_is_scoped_to_the_call():
    """The tools quiet Detectron2's and the checkpointer's logs around their work only: the
    caller's levels and warning filters are back afterwards, also after an error."""
    import logging
    import warnings

    from efl.export import quiet_inference_logs
    from efl.export.loading import QUIET_LOGGERS

    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    before = [lg.level for lg in loggers]
    loggers[1].setLevel(logging.DEBUG)  # the caller's own level for "detectron2"
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            filters = list(warnings.filters)
            with quiet_inference_logs():
                assert [lg.level for lg in loggers] == [logging.ERROR] * len(loggers)
                warnings.warn("f is deprecated", FutureWarning)
            assert seen == []  # not shown inside the call ...
            warnings.warn("f is deprecated", FutureWarning)
            assert len(seen) == 1  # ... and shown outside it
            with pytest.raises(RuntimeError), quiet_inference_logs():
                raise RuntimeError("inside")
            assert warnings.filters == filters
            assert [lg.level for lg in loggers] == [before[0], logging.DEBUG, *before[2:]]
    finally:
        loggers[1].setLevel(before[1])


@pytest.mark.slow
def test_predict_draws_and_writes_the_eager_detections(checkpoint, tiny_dataset, tmp_path):
    model, weights = checkpoint
    files = [d["file_name"] for d in DatasetCatalog.get(f"{tiny_dataset}_val")][:5]
    images = tmp_path / "images"
    images.mkdir()
    for f in files[:4]:
        shutil.copy(f, images)
    (images / "broken.jpg").write_text("not an image")
    out = tmp_path / "out"
    status, stdout, stderr = run_tool(
        "predict.py", "--input", str(images), files[4], "--output", str(out),
        "--score-thresh", "0.05", f"train.init_checkpoint={weights}", prefix=tiny_dataset)
    assert status == 1, stderr
    assert "broken.jpg" in stderr and "Traceback" not in stderr
    names = sorted(os.path.basename(f) for f in files)
    assert sorted(os.listdir(out)) == sorted([os.path.splitext(n)[0] + ".png" for n in names]
                                             + ["predictions.json"])
    results = json.loads((out / "predictions.json").read_text())
    assert results, "no detection above 0.05 on 5 images after training"
    num_classes = len(MetadataCatalog.get(f"{tiny_dataset}_val").thing_classes)
    assert {r["category_id"] for r in results} <= set(range(1, num_classes + 1))
    # The CLI's detections are the eager model's (same weights) above the threshold.
    order = sorted(os.path.join(images, n) for n in os.listdir(images)) + [files[4]]
    for image_id, path in enumerate(order):
        if path.endswith("broken.jpg"):
            continue
        image = torch.as_tensor(np.ascontiguousarray(read_image(path, "BGR").transpose(2, 0, 1)))
        with torch.no_grad():
            ref = model([{"image": image.float()}])[0]["instances"]
        ref = ref[ref.scores >= 0.05]
        got = [r for r in results if r["image_id"] == image_id]
        assert len(got) == len(ref) and all(r["file_name"] == path for r in got)
        got_scores = np.array(sorted(r["score"] for r in got))
        np.testing.assert_allclose(got_scores, np.sort(ref.scores.numpy()), atol=1e-5)


@pytest.mark.slow
def test_weights_that_do_not_fit_name_the_tensor(checkpoint, tiny_dataset, tmp_path):
    _, weights = checkpoint
    image = DatasetCatalog.get(f"{tiny_dataset}_val")[0]["file_name"]
    status, _, stderr = run_tool(
        "predict.py", "--input", image, "--output", str(tmp_path / "out"),
        f"train.init_checkpoint={weights}", "model.num_classes=5", prefix=tiny_dataset)
    assert status == 2 and "Traceback" not in stderr
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("ERROR: The weights in") and "head.cls_score.weight has shape (36, 32, 3, 3) " \
        "in the checkpoint but (15, 32, 3, 3) in the model" in error


@pytest.mark.slow
@pytest.mark.skipif(compat.TracingAdapter is None, reason="Detectron2 v0.6 fallback: its "
                    "detectron2.export needs caffe2 (see efl.compat)")
def test_export_cli_writes_a_checked_model_and_rejects_bad_input(checkpoint, tiny_dataset, tmp_path):
    _, weights = checkpoint
    sample = DatasetCatalog.get(f"{tiny_dataset}_val")[0]["file_name"]
    out = tmp_path / "deploy"
    status, stdout, stderr = run_tool(
        "export_model.py", "--format", "onnx", "--output", str(out), "--sample-image", sample,
        f"train.init_checkpoint={weights}", prefix=tiny_dataset)
    assert status == 0, stderr
    assert os.listdir(out) == ["model.onnx"] and "Check on the sample image" in stdout
    for args, message in [
        (["--format", "tflite", f"train.init_checkpoint={weights}"], "Unknown export format 'tflite'"),
        (["--format", "torchscript", "train.init_checkpoint=missing.pth"], "missing.pth: file not found"),
    ]:
        bad = tmp_path / "bad"
        status, _, stderr = run_tool("export_model.py", "--output", str(bad), *args, prefix=tiny_dataset)
        assert status == 2 and "Traceback" not in stderr
        assert message in stderr.strip().splitlines()[-1]
        assert not bad.exists()
