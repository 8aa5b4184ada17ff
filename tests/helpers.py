"""Shared test helpers: the repository root and small LazyConfigs on the tiny dataset
(the ``tiny_dataset`` fixture in conftest.py registers it)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CLASSES = 12


def tiny_lazy_config(kind: str, prefix: str, output_dir: str, max_iter: int = 4):
    """configs/Synthetic/retinanet_{kind}.py shrunk to the tiny dataset and a few
    iterations (checkpoint every 2, evaluation at the end)."""
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(os.path.join(ROOT, f"configs/Synthetic/retinanet_{kind}.py"))
    shrink_to_tiny(cfg, prefix, output_dir)
    cfg.train.max_iter = max_iter
    cfg.train.checkpointer.period = 2
    cfg.lr_multiplier.scheduler.milestones = [max_iter - 1]
    cfg.lr_multiplier.scheduler.values = [1.0, 0.1]
    cfg.lr_multiplier.warmup_length = 1 / max_iter
    return cfg


def shrink_to_tiny(cfg, prefix: str, output_dir: str):
    """A configs/Synthetic/ config, in place, on the tiny dataset ``prefix``: K = 12, 32
    channels, one conv per head tower, batch 2, no loader workers, log every iteration."""
    cfg.model.num_classes = TINY_CLASSES
    cfg.model.backbone.out_channels = 32
    cfg.model.head.input_shape = [{"channels": 32}] * 3
    cfg.model.head.conv_dims = [32]
    if "efl" in cfg.model:
        cfg.model.efl.class_groups.dataset_name = f"{prefix}_train"
    cfg.dataloader.train.dataset.names = f"{prefix}_train"
    cfg.dataloader.test.dataset.names = f"{prefix}_val"
    cfg.dataloader.train.total_batch_size = 2
    cfg.dataloader.train.num_workers = 0
    cfg.dataloader.test.num_workers = 0
    cfg.train.log_period = 1
    cfg.train.output_dir = output_dir
    return cfg
