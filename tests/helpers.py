"""Shared test helpers: the repository root and small LazyConfigs on the tiny dataset
(the ``tiny_dataset`` fixture in conftest.py registers it)."""

import os
import socket

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
    if "class_groups" in (cfg.model.get("cls_loss") or {}):
        cfg.model.cls_loss.class_groups.dataset_name = f"{prefix}_train"
    cfg.dataloader.train.dataset.names = f"{prefix}_train"
    cfg.dataloader.test.dataset.names = f"{prefix}_val"
    cfg.dataloader.train.total_batch_size = 2
    cfg.dataloader.train.num_workers = 0
    cfg.dataloader.test.num_workers = 0
    cfg.train.log_period = 1
    cfg.train.output_dir = output_dir
    return cfg


def tiny_yaml_config(name: str, prefix: str, output_dir: str, max_iter: int = 4):
    """configs/yaml/<name>.yaml with :func:`tiny_yaml_opts`, as a config."""
    from detectron2.config import get_cfg

    from efl import add_atss_config

    cfg = get_cfg()
    add_atss_config(cfg)  # MODEL.ATSS and MODEL.EFL (add_efl_config)
    cfg.merge_from_file(yaml_config_file(name))
    cfg.merge_from_list(tiny_yaml_opts(prefix, output_dir, max_iter))
    return cfg


def yaml_config_file(name: str) -> str:
    return os.path.join(ROOT, f"configs/yaml/{name}.yaml")


def tiny_yaml_opts(prefix: str, output_dir: str, max_iter: int = 4):
    """Overrides (``merge_from_list`` / command line) that put a configs/yaml/ file on CPU,
    shrunk to the tiny dataset ``prefix``: R-18 with BN, 64 FPN channels (GroupNorm(32)
    needs 2 per group on a 1x1 P7), one conv per head tower, 96 px images, batch 2,
    ``max_iter`` iterations, evaluation on ``<prefix>_val`` at the end only."""
    return [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0",
        "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.RETINANET.NUM_CONVS", "1",
        "MODEL.RETINANET.NUM_CLASSES", str(TINY_CLASSES),
        "MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32], [64], [128], [256]]",
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[1.0]]",
        "DATASETS.TRAIN", f"('{prefix}_train',)", "DATASETS.TEST", f"('{prefix}_val',)",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter), "SOLVER.BASE_LR", "0.001",
        "SOLVER.STEPS", f"({max_iter - 1},)", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.CHECKPOINT_PERIOD", "100", "SOLVER.CLIP_GRADIENTS.ENABLED", "False",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96",
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96",
        "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", output_dir,
    ]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a torch.distributed rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
