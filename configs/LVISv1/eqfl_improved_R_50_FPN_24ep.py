"""qfl_improved_R_50_FPN_24ep.py with Equalized Quality Focal Loss (gamma_b 2, s 8), the EFL
authors' second loss. Not trained by this project: no figure to reproduce."""

from ..common.quality import use_eqfl
from .qfl_improved_R_50_FPN_24ep import dataloader, lr_multiplier, model, optimizer, train

use_eqfl(model, train_dataset="lvis_v1_train", gamma_b=2.0, scale_factor=8.0)
train.output_dir = "./output/lvis_v1/eqfl_improved_R_50_FPN_24ep"
