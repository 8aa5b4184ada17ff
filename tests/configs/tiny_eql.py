"""Test-only config: tests/configs/tiny_efl.py with its classification loss replaced by
EQL (``$EFL_TINY_LOSS=eql``) or EQLv2 (``eqlv2``, the default), on the tiny dataset in
``$EFL_TINY_DATASET``."""

import os
import sys

from detectron2.config import LazyCall as L

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_efl import dataloader, lr_multiplier, model, optimizer, train  # noqa: E402,F401

from efl import EqualizationLoss, EqualizationLossV2  # noqa: E402
from efl.data.image_frequency import class_image_frequency  # noqa: E402

_KEY = "cls_loss" if "cls_loss" in model else "efl"
if os.environ.get("EFL_TINY_LOSS", "eqlv2") == "eql":
    model[_KEY] = L(EqualizationLoss)(
        num_classes="${..num_classes}",
        image_frequency=L(class_image_frequency)(dataset_name="efl_tiny_train"),
    )
else:
    model[_KEY] = L(EqualizationLossV2)(num_classes="${..num_classes}")
train.output_dir = "./output/tiny_eql"
