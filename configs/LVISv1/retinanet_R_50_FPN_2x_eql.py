"""EQL RetinaNet R-50-FPN on LVIS v1: retinanet_R_50_FPN_2x_focal.py with the
classification loss replaced by Equalization Loss (lambda 0.0011, theirs for LVIS v1, on
the focal loss: docs/baselines.md)."""

from ..common.equalization import use_eql
from .retinanet_R_50_FPN_2x_focal import dataloader, lr_multiplier, model, optimizer, train

use_eql(model, train_dataset="lvis_v1_train", lambda_=0.0011, base_loss="focal")
train.output_dir = "./output/lvis_v1/retinanet_R_50_FPN_2x_eql"
