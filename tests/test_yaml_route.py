"""The YAML route through evaluation (docs/yaml-route.md): configs/yaml/*.yaml trained
with efl.engine.YAMLTrainer (Detectron2's DefaultTrainer with the project's LVIS
evaluator) for a few iterations, evaluated on the tiny dataset at the end of training,
the EFL state saved (and moved) in model_final.pth; the drop-in
efl.evaluation.LVISEvaluator (lvis-api itself) gives the same numbers through Detectron2's
stock DefaultTrainer.test. (Detectron2's own LVISEvaluator stops inside lvis-api 0.5.3 on
numpy >= 1.24: np.float.)"""

import math
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultTrainer

from efl.engine import YAMLTrainer
from efl.errors import InputError
from efl.evaluation import BOX_KEYS, LVISEvaluator
from helpers import TINY_CLASSES, tiny_yaml_config


@pytest.mark.slow
@pytest.mark.parametrize("name, meta_arch", [
    ("efl_retinanet_R_50_FPN", "EFLRetinaNet"),
    ("efl_improved_R_50_FPN", "ATSSRetinaNet"),
    ("eqfl_quality_R_50_FPN", "QualityATSSRetinaNet"),  # from_config: QualityHead, EQFL
])
def test_yaml_config_trains_and_evaluates(name, meta_arch, tiny_dataset, tmp_path):
    cfg = tiny_yaml_config(name, tiny_dataset, str(tmp_path))
    trainer = YAMLTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # DefaultTrainer returns results only with TEST.EXPECTED_RESULTS

    model = trainer.model
    assert type(model).__name__ == meta_arch and model.cls_loss.group_names  # r/c/f groups
    latest = trainer.storage.latest()  # EvalHook's results, as in metrics.json
    box = {k: latest[f"bbox/{k}"][0] for k in BOX_KEYS}
    assert all(math.isfinite(box[k]) for k in BOX_KEYS), box
    assert os.path.isfile(tmp_path / "inference" / "lvis_instances_results.json")

    # The EFL state moved and is in the checkpoint, loaded back by Detectron2's checkpointer.
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    assert saved["cls_loss.pos_neg"].shape == (TINY_CLASSES,) and saved["cls_loss.pos_neg"].min() < 1
    fresh = YAMLTrainer.build_model(cfg)
    assert torch.equal(fresh.cls_loss.pos_neg, torch.ones(TINY_CLASSES))
    DetectionCheckpointer(fresh).load(str(tmp_path / "model_final.pth"))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key

    # lvis-api itself (the drop-in evaluator, through the stock DefaultTrainer) agrees.
    if name == "efl_retinanet_R_50_FPN":
        reference = DefaultTrainer.test(cfg, model, evaluators=[
            LVISEvaluator(cfg.DATASETS.TEST[0], output_dir=str(tmp_path / "lvis_api"),
                          max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)])["bbox"]
        for key in BOX_KEYS:
            assert box[key] == pytest.approx(reference[key], abs=1e-9), key


def test_evaluator_for_a_dataset_without_lvis_json_says_what_to_do(tmp_path):
    from detectron2.data import DatasetCatalog

    DatasetCatalog.register("efl_no_json_val", lambda: [])
    try:
        cfg = tiny_yaml_config("efl_retinanet_R_50_FPN", "efl_no_json", str(tmp_path))
        with pytest.raises(InputError, match="efl_no_json_val.*register_lvis_format"):
            YAMLTrainer.build_evaluator(cfg, "efl_no_json_val")
    finally:
        DatasetCatalog.remove("efl_no_json_val")
