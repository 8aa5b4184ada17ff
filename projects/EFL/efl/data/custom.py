"""Datasets named by a config's ``dataset`` node (``configs/Custom/``): the files come
from the command line (``dataset.train_json=... dataset.val_json=... dataset.image_root=...``),
are registered when the run is set up, and ``model.num_classes`` follows from them."""

import os

from detectron2.data import MetadataCatalog

from ..errors import ConfigError, InputError
from .lvis import prepare_datasets, register_lvis_format

__all__ = ["setup_custom_dataset"]

_KEYS = {"train_json": "file", "val_json": "file", "image_root": "folder"}
_EXAMPLE = ("dataset.train_json=OUT/train.json dataset.val_json=OUT/val.json "
            "dataset.image_root=IMAGES (OUT written by tools/prepare_long_tail.py)")


def setup_custom_dataset(cfg):
    """If ``cfg`` has a ``dataset`` node: check its keys, register ``<dataset.name>_train``
    / ``_val`` (LVIS format) and set ``model.num_classes`` from the training file. Other
    configs are returned unchanged. Raises ConfigError naming the key."""
    if "dataset" not in cfg:
        return cfg
    ds = cfg.dataset
    for key, kind in _KEYS.items():
        value = ds.get(key)
        if not value:
            raise ConfigError(f"dataset.{key} is not set: this config trains on your own data "
                              f"and takes its files from the command line, e.g. {_EXAMPLE}.")
        exists = os.path.isfile if kind == "file" else os.path.isdir
        if not exists(os.path.expanduser(str(value))):
            raise ConfigError(f"dataset.{key}={value} is not an existing {kind}. Pass the "
                              f"{'annotation file' if kind == 'file' else 'image folder'}: {_EXAMPLE}.")
    names = {split: f"{ds.name}_{split}" for split in ("train", "val")}
    for split, name in names.items():
        json_file = os.path.abspath(os.path.expanduser(ds[f"{split}_json"]))
        try:
            register_lvis_format(name, json_file, os.path.abspath(os.path.expanduser(ds.image_root)))
        except ValueError as e:  # the name is taken by other files
            raise ConfigError(f"dataset.name={ds.name}: {e}; pass another dataset.name.") from None
        try:
            prepare_datasets([name])
        except InputError as e:
            raise ConfigError(f"dataset.{split}_json={ds[f'{split}_json']}: {e} Prepare the "
                              "files with tools/prepare_long_tail.py.") from None
        if MetadataCatalog.get(name).get("class_groups") is None:
            raise ConfigError(
                f"dataset.{split}_json={ds[f'{split}_json']} has categories without 'frequency' "
                "(r/c/f): it is not a prepared LVIS-format file. Run tools/prepare_long_tail.py "
                "--train ... --val ... --image-root ... --out OUT and pass OUT/train.json, "
                "OUT/val.json.")
    train_classes = MetadataCatalog.get(names["train"]).thing_classes
    if MetadataCatalog.get(names["val"]).thing_classes != train_classes:
        raise ConfigError(f"dataset.val_json={ds.val_json} lists other categories than "
                          f"dataset.train_json={ds.train_json}; prepare both with one run of "
                          "tools/prepare_long_tail.py.")
    cfg.model.num_classes = len(train_classes)
    return cfg
