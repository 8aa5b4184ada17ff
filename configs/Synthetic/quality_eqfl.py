"""quality_qfl.py with Equalized Quality Focal Loss (gamma_b 2, s 8) in place of QFL."""

from ..common.quality import use_eqfl
from .quality_qfl import dataloader, lr_multiplier, model, optimizer, train

use_eqfl(model, train_dataset="synthetic_lt_train", gamma_b=2.0, scale_factor=8.0)
train.output_dir = "./output/synthetic/quality_eqfl"
