"""retinanet_focal.py with the classification loss replaced by
Equalization Loss v2 (gamma 12, mu 0.8, alpha 4, on the focal loss): docs/baselines.md."""

from ..common.equalization import use_eqlv2
from .retinanet_focal import dataloader, lr_multiplier, model, optimizer, train

use_eqlv2(model, train_dataset="synthetic_lt_train", base_loss="focal")
train.output_dir = "./output/synthetic/retinanet_eqlv2"
