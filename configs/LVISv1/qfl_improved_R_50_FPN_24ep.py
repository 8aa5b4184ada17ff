"""The improved detector (focal_improved_R_50_FPN_24ep.py's recipe) as a quality-score
detector: QualityATSSRetinaNet (no IoU branch) with Quality Focal Loss (beta 2) against the
IoU of the decoded box. Twin of eqfl_improved_R_50_FPN_24ep.py (identical but for the loss).
Not trained here: no published figure for this pair."""

from ..common.quality import use_quality_loss
from .focal_improved_R_50_FPN_24ep import dataloader, lr_multiplier, model, optimizer, train

use_quality_loss(model, train_dataset="lvis_v1_train", gamma_b=2.0, scale_factor=0.0)
train.output_dir = "./output/lvis_v1/qfl_improved_R_50_FPN_24ep"
