"""Shared fixtures: a tiny generated LVIS-format dataset (helpers.py has the small
LazyConfigs on it)."""

import pytest

from helpers import TINY_CLASSES


@pytest.fixture(scope="session", autouse=True)
def same_torchscript_execution():
    """Every test runs TorchScript functions unoptimised. Detectron2's RetinaNet (and the
    ATSS focal baseline) compute focal loss with fvcore's scripted ``sigmoid_focal_loss_jit``;
    TorchScript's profiling executor runs its first calls in a process with eager autograd
    and later ones as an optimised graph with symbolic gradients, whose float rounding
    differs. A tiny training's weights then depended on how many focal-loss calls earlier
    tests had made (measured: the same 150-iteration RetinaNet training, twice in one
    process, differed from the first optimiser step; top score 0.66 then 0.26). Unoptimised,
    every call computes the same way, whatever ran before (tests/test_repeatability.py).
    The executor flag is per thread; tests and their backward passes run in this one."""
    import torch

    with torch.jit.optimized_execution(False):
        yield


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """``efl_tiny_train`` / ``efl_tiny_val``: 12 classes, 40 + 12 images of 96 px."""
    from efl.data.builtin import register_synthetic
    from efl.data.lvis import prepare_datasets
    from efl.data.synthetic import SyntheticLongTailConfig

    cfg = SyntheticLongTailConfig(
        num_classes=TINY_CLASSES, num_train_images=40, num_val_images=12, image_size=96,
        min_objects=1, max_objects=3, min_object_size=12, max_object_size=28,
        rare_max_images=3, common_max_images=10,
    )
    root = str(tmp_path_factory.mktemp("datasets") / "tiny")
    register_synthetic("efl_tiny", root, cfg)
    prepare_datasets(["efl_tiny_train", "efl_tiny_val"])
    return "efl_tiny"
