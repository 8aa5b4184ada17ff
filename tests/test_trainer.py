"""The LazyConfig Trainer: a few iterations, checkpoint contents, resume, evaluation with
LVISEvaluator, outputs (metrics.json with the EFL summaries, results.json, run_info.json),
and Detectron2's stock DefaultTrainer on the YAML config."""

import json
import os
import shutil

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultTrainer
from detectron2.utils.events import EventStorage

from efl.engine import Trainer
from helpers import TINY_CLASSES, tiny_lazy_config, tiny_yaml_config


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def efl_run(tiny_dataset, tmp_path_factory):
    """4 iterations of the tiny EFL config: checkpoints at iterations 2 and 4 (final)."""
    out = str(tmp_path_factory.mktemp("efl_run"))
    trainer = Trainer(tiny_lazy_config("efl", tiny_dataset, out))
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    return out, results, trainer


@pytest.mark.slow
def test_trainer_trains_evaluates_and_writes_outputs(efl_run):
    out, results, _ = efl_run
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
        assert key in results["bbox"]
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    assert saved["iteration"] == 4 and saved["results"]["bbox"].keys() == results["bbox"].keys()
    with open(os.path.join(out, "run_info.json")) as f:
        info = json.load(f)
    assert info["meta_architecture"] == "EFLRetinaNet" and info["num_classes"] == TINY_CLASSES
    assert info["cls_loss"] == {"name": "EqualizedFocalLoss", "gamma_b": 2.0, "scale_factor": 8.0,
                                "focusing": True, "weighting": True, "alpha": 0.25}
    assert os.path.exists(info["test_json"])
    metrics = read_metrics(out)
    assert [m["iteration"] for m in metrics if "total_loss" in m] == [0, 1, 2, 3]
    last = [m for m in metrics if "total_loss" in m][-1]
    # EFL summaries per frequency group, never one scalar per class, no "loss" in names.
    efl_keys = {k for k in last if k.startswith("efl/")}
    assert {"efl/pos_neg_r", "efl/pos_neg_c", "efl/pos_neg_f", "efl/gamma_r"} <= efl_keys
    assert len(efl_keys) <= 8
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))  # TensorBoard
    assert os.path.exists(os.path.join(out, "inference", "lvis_instances_results.json"))


@pytest.mark.slow
def test_checkpoint_holds_model_efl_state_optimizer_scheduler_iteration(efl_run):
    out, _, trainer = efl_run
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    efl_state = trainer.model.cls_loss.state_dict()
    for name in ("pos_grad", "neg_grad", "pos_neg"):
        assert torch.equal(ckpt["model"][f"cls_loss.{name}"], efl_state[name])
    assert ckpt["model"]["cls_loss.pos_neg"].min() < 1  # the state moved during training
    assert ckpt["iteration"] == 3
    assert ckpt["trainer"]["iteration"] == 3
    assert ckpt["trainer"]["_trainer"]["optimizer"]["state"]  # momentum buffers
    scheduler = ckpt["trainer"]["hooks"]["LRScheduler"]
    assert scheduler["last_epoch"] == 4
    assert os.path.exists(os.path.join(out, "model_0000001.pth"))


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(efl_run, tiny_dataset, tmp_path):
    out, _, _ = efl_run
    # A run that stopped after the checkpoint of iteration 2 (index 1).
    run = tmp_path / "resumed"
    run.mkdir()
    shutil.copy(os.path.join(out, "model_0000001.pth"), run / "model_0000001.pth")
    (run / "last_checkpoint").write_text("model_0000001.pth")
    trainer = Trainer(tiny_lazy_config("efl", tiny_dataset, str(run)))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    saved = torch.load(run / "model_0000001.pth", weights_only=True)
    assert torch.equal(trainer.model.cls_loss.pos_grad, saved["model"]["cls_loss.pos_grad"])
    assert trainer.optimizer.state_dict()["state"]  # optimizer state restored
    trainer.train()
    iters = [m["iteration"] for m in read_metrics(run) if "total_loss" in m]
    assert iters == [2, 3]
    final = torch.load(run / "model_final.pth", weights_only=True)
    assert final["iteration"] == 3
    assert not torch.equal(final["model"]["cls_loss.pos_grad"], saved["model"]["cls_loss.pos_grad"])


def test_focal_baseline_is_stock_retinanet(tiny_dataset, tmp_path):
    from detectron2.modeling import RetinaNet

    cfg = tiny_lazy_config("focal", tiny_dataset, str(tmp_path), max_iter=2)
    cfg.train.eval_period = 0
    model = Trainer.build_model(cfg)
    assert type(model) is RetinaNet


def test_num_classes_mismatch_is_a_clear_error(tiny_dataset, tmp_path):
    from efl.errors import InputError

    cfg = tiny_lazy_config("focal", tiny_dataset, str(tmp_path))
    cfg.model.num_classes = TINY_CLASSES + 3
    with pytest.raises(InputError, match=f"num_classes={TINY_CLASSES + 3}.*{TINY_CLASSES} categories"):
        Trainer.build_model(cfg)


@pytest.mark.slow
def test_yaml_config_trains_with_stock_default_trainer(tiny_dataset, tmp_path):
    cfg = tiny_yaml_config("efl_retinanet_R_50_FPN", tiny_dataset, str(tmp_path), max_iter=3)
    cfg.DATASETS.TEST = ()  # evaluation: test_yaml_route.py
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model
    assert type(model).__name__ == "EFLRetinaNet"
    assert model.cls_loss.group_names  # r/c/f groups came from the dataset's metadata
    assert model.cls_loss.pos_neg.min() < 1
    # Detectron2's own checkpointer saved the EFL state with the weights and loads it back.
    fresh = DefaultTrainer.build_model(cfg)
    assert torch.equal(fresh.cls_loss.pos_neg, torch.ones(TINY_CLASSES))
    DetectionCheckpointer(fresh).load(str(tmp_path / "model_final.pth"))
    loaded = fresh.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(loaded[name], value), name
