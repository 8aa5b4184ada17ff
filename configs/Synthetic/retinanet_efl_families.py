"""retinanet_focal_families.py with the classification loss replaced by Equalized Focal
Loss (gamma_b 2, s 8, alpha 0.25), as retinanet_efl.py is to retinanet_focal.py."""

from ..common.efl import use_efl
from .retinanet_focal_families import dataloader, lr_multiplier, model, optimizer, train

use_efl(model, train_dataset="synthetic_lt_families_train", gamma_b=2.0, scale_factor=8.0,
        alpha=0.25)
train.output_dir = "./output/synthetic/retinanet_efl_families"
