"""Shared fixtures: a tiny generated LVIS-format dataset (helpers.py has the small
LazyConfigs on it)."""

import pytest

from helpers import TINY_CLASSES


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
