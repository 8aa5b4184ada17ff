"""The EFL authors' improved detector on LVIS v1, R-50, with Equalization Loss v2
(gamma 12, mu 0.8, alpha 4, theirs, on the focal loss) in place of the focal loss:
everything else is focal_improved_R_50_FPN_24ep.py (docs/baselines.md)."""

from ..common.equalization import use_eqlv2
from .focal_improved_R_50_FPN_24ep import dataloader, lr_multiplier, model, optimizer, train

use_eqlv2(model, train_dataset="lvis_v1_train", base_loss="focal")
train.output_dir = "./output/lvis_v1/eqlv2_improved_R_50_FPN_24ep"
