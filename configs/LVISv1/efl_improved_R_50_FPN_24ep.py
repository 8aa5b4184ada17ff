"""The EFL authors' LVIS v1 recipe, R-50: ATSSRetinaNet with Equalized Focal Loss
(gamma_b 2, s 8, alpha 0.25). Published: box AP 27.5 (APr 20.2, APc 26.1, APf 32.4) on LVIS
v1 val. Everything but the loss is focal_improved_R_50_FPN_24ep.py (see its recipe notes)."""

from ..common.efl import use_efl
from .focal_improved_R_50_FPN_24ep import dataloader, lr_multiplier, model, optimizer, train

use_efl(model, train_dataset="lvis_v1_train", gamma_b=2.0, scale_factor=8.0, alpha=0.25)
train.output_dir = "./output/lvis_v1/efl_improved_R_50_FPN_24ep"
