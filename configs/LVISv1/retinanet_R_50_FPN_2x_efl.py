"""EFL RetinaNet R-50-FPN on LVIS v1: retinanet_R_50_FPN_2x_focal.py with the
classification loss replaced by Equalized Focal Loss (gamma_b 2, s 8, alpha 0.25)."""

from ..common.efl import use_efl
from .retinanet_R_50_FPN_2x_focal import dataloader, lr_multiplier, model, optimizer, train

use_efl(model, train_dataset="lvis_v1_train", gamma_b=2.0, scale_factor=8.0, alpha=0.25)
train.output_dir = "./output/lvis_v1/retinanet_R_50_FPN_2x_efl"
