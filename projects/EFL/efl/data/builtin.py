"""Datasets this project registers on import, like Detectron2's built-ins:

- ``synthetic_lt_train`` / ``synthetic_lt_val``: the embedded long-tailed dataset
  (:mod:`efl.data.synthetic`, default parameters) under ``$DETECTRON2_DATASETS/synthetic_lt``,
  generated on first use.
- ``synthetic_lt_families_train`` / ``_val``: the same with LVIS's structure
  (:data:`FAMILY_DATA`: 16 families of 4 - a frequent parent and three relatives of its
  shape and colour differing in a small mark - and 56 classes as above) under
  ``$DETECTRON2_DATASETS/synthetic_lt_families``; configs/Synthetic/retinanet_*_families.py.
"""

import os

from .lvis import datasets_root, register_lvis_format
from .synthetic import SyntheticLongTailConfig, dataset_paths, generate_synthetic_lvis

__all__ = ["register_synthetic", "FAMILY_DATA"]

FAMILY_DATA = SyntheticLongTailConfig(families=16, family_size=4)


def register_synthetic(prefix: str, root: str, cfg: SyntheticLongTailConfig = None) -> None:
    """Register ``<prefix>_train`` and ``<prefix>_val``: a synthetic set under ``root``,
    generated (once, by the first process) when a run first needs it."""
    from detectron2.utils import comm

    paths = dataset_paths(root)

    def prepare():
        generate_synthetic_lvis(root, cfg, progress=comm.is_main_process())

    register_lvis_format(f"{prefix}_train", paths["train_json"], paths["image_root"], prepare)
    register_lvis_format(f"{prefix}_val", paths["val_json"], paths["image_root"], prepare)


register_synthetic("synthetic_lt", os.path.join(datasets_root(), "synthetic_lt"))
register_synthetic("synthetic_lt_families", os.path.join(datasets_root(), "synthetic_lt_families"),
                   FAMILY_DATA)
