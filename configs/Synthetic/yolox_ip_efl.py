"""yolox_ip_focal.py with the classification loss replaced by Equalized Focal Loss
(gamma_b 2, s 4 as the authors' efl_yolox_{small,medium}.yaml, alpha 0.25); the same
augmentations, optimisation and model EMA (see yolox_ip_focal.py)."""

from ..common.efl import use_efl
from .yolox_ip_focal import dataloader, lr_multiplier, model, optimizer, train

use_efl(model, train_dataset="synthetic_lt_train", gamma_b=2.0, scale_factor=4.0, alpha=0.25)
train.output_dir = "./output/synthetic/yolox_ip_efl"
