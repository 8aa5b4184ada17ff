"""improved_focal.py with the classification loss replaced by Equalization Loss on the
focal loss (docs/baselines.md). lambda 0.05: 100 of the 2000 training images, the
common/frequent boundary, where theirs sits on LVIS (v1: 0.0011 x 99388 = 109 images;
v0.5: 0.00177 x 57k = 100); it takes the rare and common classes (103 of 120)."""

from ..common.equalization import use_eql
from .improved_focal import dataloader, lr_multiplier, model, optimizer, train

use_eql(model, train_dataset="synthetic_lt_train", lambda_=0.05, base_loss="focal")
train.output_dir = "./output/synthetic/improved_eql"
