"""EQL and EQLv2 inside a detector: short trainings on the tiny dataset (EQLv2's state
moves, is checkpointed with the model and restored on resume; EQL trains and leaves no
state), and the YAML route's MODEL.EFL.LOSS choice."""

import os

import pytest
import torch

from efl import EqualizationLoss, EqualizationLossV2
from efl.errors import ConfigError
from helpers import TINY_CLASSES, tiny_lazy_config

STATE = ("pos_grad", "neg_grad", "pos_neg")


def _train(cfg, resume=False):
    from efl.engine import Trainer

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    return trainer, trainer.train()


@pytest.mark.slow
def test_eqlv2_state_moves_is_checkpointed_and_resumed(tiny_dataset, tmp_path):
    out = str(tmp_path)
    trainer, results = _train(tiny_lazy_config("eqlv2", tiny_dataset, out, max_iter=4))
    loss = trainer.model.cls_loss
    assert isinstance(loss, EqualizationLossV2) and loss.base_loss == "focal"
    assert loss.pos_grad.sum() > 0 and (loss.neg_grad > 0).all()
    assert torch.isfinite(loss.pos_neg).all() and (loss.pos_neg != 100).all()  # left 100
    torch.testing.assert_close(loss.pos_neg, loss.pos_grad / (loss.neg_grad + 1e-10))
    assert "bbox" in results
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["model"]
    middle = torch.load(os.path.join(out, "model_0000001.pth"), weights_only=False)["model"]
    for name in STATE:
        assert torch.equal(final[f"cls_loss.{name}"], getattr(loss, name)), name
    assert (final["cls_loss.neg_grad"] > middle["cls_loss.neg_grad"]).all()  # it accumulates

    # --resume: the state comes back from the checkpoint and keeps accumulating
    from efl.engine import Trainer

    cfg = tiny_lazy_config("eqlv2", tiny_dataset, out, max_iter=6)
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    for name in STATE:
        assert torch.equal(getattr(resumed.model.cls_loss, name), final[f"cls_loss.{name}"]), name
    resumed.train()
    assert (resumed.model.cls_loss.neg_grad > final["cls_loss.neg_grad"]).all()


@pytest.mark.slow
def test_eql_trains_in_the_detector_without_state(tiny_dataset, tmp_path):
    cfg = tiny_lazy_config("eql", tiny_dataset, str(tmp_path), max_iter=2)
    cfg.model.cls_loss.image_frequency.dataset_name = f"{tiny_dataset}_train"
    cfg.model.cls_loss.lambda_ = 0.1  # 4 of the 40 images: the tiny data's rare classes
    trainer, results = _train(cfg)
    loss = trainer.model.cls_loss
    assert isinstance(loss, EqualizationLoss) and loss.num_classes == TINY_CLASSES
    assert loss.rare.any() and not loss.rare.all()
    final = torch.load(os.path.join(str(tmp_path), "model_final.pth"), weights_only=False)
    assert not any(k.startswith("cls_loss.") for k in final["model"])
    assert "bbox" in results


@pytest.mark.parametrize("name, cls", [("EQL", EqualizationLoss), ("EQLv2", EqualizationLossV2)])
def test_yaml_model_efl_loss_chooses_eql_and_eqlv2(tiny_dataset, name, cls):
    from detectron2.config import get_cfg

    from efl import add_atss_config
    from efl.config import cls_loss_from_config

    cfg = get_cfg()
    add_atss_config(cfg)
    cfg.DATASETS.TRAIN = (f"{tiny_dataset}_train",)
    cfg.MODEL.EFL.LOSS = name
    cfg.MODEL.EFL.EQL_BASE_LOSS = "bce"
    loss = cls_loss_from_config(cfg, TINY_CLASSES)
    assert type(loss) is cls and loss.base_loss == "bce" and loss.num_classes == TINY_CLASSES
    if cls is EqualizationLoss:
        assert loss.lambda_ == 0.0011
    else:
        assert (loss.map_gamma, loss.mu, loss.alpha) == (12.0, 0.8, 4.0)
        assert loss.group_names  # the tiny data's r/c/f groups
    cfg.MODEL.EFL.EQL_BASE_LOSS = "softmax"
    with pytest.raises(ConfigError, match=r"MODEL\.EFL \(LOSS='EQL.*base_loss must be one of"):
        cls_loss_from_config(cfg, TINY_CLASSES)
    cfg.MODEL.EFL.EQL_BASE_LOSS = "focal"
    with pytest.raises(ConfigError, match="quality-score detector"):
        cls_loss_from_config(cfg, TINY_CLASSES, quality=True)


def test_inference_model_of_an_eql_config_needs_no_training_data(monkeypatch):
    """EQL's image frequencies are for training: building the model to predict or export
    does not read the training set (here: a dataset that is not registered)."""
    from detectron2.config import LazyConfig

    from efl.export import loading
    from helpers import ROOT

    monkeypatch.setattr(loading, "load_weights", lambda model, path: None)
    cfg = LazyConfig.load(os.path.join(ROOT, "configs/Synthetic/retinanet_eql.py"))
    cfg.model.cls_loss.image_frequency.dataset_name = "not_a_registered_dataset"
    model = loading.build_inference_model(cfg)
    assert isinstance(model.cls_loss, EqualizationLoss) and not model.training
