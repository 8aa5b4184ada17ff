"""The EFL authors' improved detector on LVIS v1, R-50, with Equalization Loss (lambda
0.0011, theirs for LVIS v1, on the focal loss) in place of the focal loss: everything
else is focal_improved_R_50_FPN_24ep.py (docs/baselines.md)."""

from ..common.equalization import use_eql
from .focal_improved_R_50_FPN_24ep import dataloader, lr_multiplier, model, optimizer, train

use_eql(model, train_dataset="lvis_v1_train", lambda_=0.0011, base_loss="focal")
train.output_dir = "./output/lvis_v1/eql_improved_R_50_FPN_24ep"
