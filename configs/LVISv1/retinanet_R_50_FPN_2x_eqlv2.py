"""EQLv2 RetinaNet R-50-FPN on LVIS v1: retinanet_R_50_FPN_2x_focal.py with the
classification loss replaced by Equalization Loss v2 (gamma 12, mu 0.8, alpha 4, theirs,
on the focal loss: docs/baselines.md)."""

from ..common.equalization import use_eqlv2
from .retinanet_R_50_FPN_2x_focal import dataloader, lr_multiplier, model, optimizer, train

use_eqlv2(model, train_dataset="lvis_v1_train", base_loss="focal")
train.output_dir = "./output/lvis_v1/retinanet_R_50_FPN_2x_eqlv2"
