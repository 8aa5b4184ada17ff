"""Tiny detectors of each exportable meta-architecture, trained briefly (once per test
session) on the tiny dataset, for the export and predict tests."""

import contextlib
import copy
import functools
import os

from detectron2.config import LazyConfig

from helpers import ROOT, tiny_lazy_config

ARCHS = ("retinanet", "efl_retinanet", "efl_fcos", "atss")
# The trainings are repeatable (train.seed 0, applied by plan_run): the same weights every
# run, whatever ran before. 150 iterations, not 80: at 80 the stock RetinaNet of seed 0 is
# still at the prior (top score 0.02 < 0.05; EFLRetinaNet 0.08, EFLFCOS 0.54, ATSS 0.35);
# at 80, seeds 1-3 gave top scores 0.04-0.84 on the 12 validation images: 80 passed by the
# luck of the seed drawn, not by design. At 150 (seed 0): 0.57, 0.88, 0.78, 0.50.
TRAIN_ITERS = 150


def tiny_deploy_config(arch: str, prefix: str, output_dir: str, max_iter: int = TRAIN_ITERS):
    """A tiny config (conftest's, K = 12, 32 channels) of ``arch``: stock RetinaNet,
    EFLRetinaNet, EFLFCOS (configs/common/models/fcos.py's head on the same backbone) or
    the EFL ATSSRetinaNet (configs/Synthetic/improved_efl.py), ``max_iter`` iterations."""
    cfg = tiny_lazy_config("focal" if arch == "retinanet" else "efl", prefix, output_dir, max_iter)
    cfg.train.checkpointer.period = 10 * max_iter  # model_final.pth only
    if arch == "efl_fcos":
        from efl import EFLFCOS

        fcos = LazyConfig.load(os.path.join(ROOT, "configs/common/models/fcos.py")).model
        for key in ("backbone", "head_in_features", "num_classes", "pixel_mean", "pixel_std",
                    "cls_loss", "max_detections_per_image"):
            fcos[key] = copy.deepcopy(cfg.model[key])
        fcos._target_ = EFLFCOS
        fcos.head.input_shape = cfg.model.head.input_shape
        fcos.head.conv_dims = cfg.model.head.conv_dims
        fcos.test_score_thresh = 0.05
        cfg.model = fcos
    elif arch == "atss":
        improved = LazyConfig.load(os.path.join(ROOT, "configs/Synthetic/improved_efl.py")).model
        improved.backbone = cfg.model.backbone
        for key in ("num_classes", "cls_loss"):
            improved[key] = copy.deepcopy(cfg.model[key])
        improved.head.input_shape = cfg.model.head.input_shape
        improved.head.conv_dims = cfg.model.head.conv_dims
        cfg.model = improved
    return cfg


@contextlib.contextmanager
def one_thread():
    """Tiny convolutions: a second (OpenMP) thread only contends, badly so when other
    processes load the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def trained(arch: str, prefix: str, output_root: str):
    """(config, model in eval mode, path of model_final.pth) after a short training run."""
    from efl.engine import Trainer

    cfg = tiny_deploy_config(arch, prefix, os.path.join(output_root, arch))
    with one_thread():
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    return cfg, trainer.model.eval(), os.path.join(cfg.train.output_dir, "model_final.pth")
