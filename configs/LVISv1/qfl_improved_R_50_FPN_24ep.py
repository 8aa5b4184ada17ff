"""The improved detector (focal_improved_R_50_FPN_24ep.py's recipe) as a quality-score
detector: QualityATSSRetinaNet (no IoU branch; score = class probability) with Quality Focal
Loss (beta 2) against the IoU of the decoded box. Twin of eqfl_improved_R_50_FPN_24ep.py
(identical but for the loss). Not trained by this project: no figure to reproduce."""

from ..common.quality import use_quality_score
from .focal_improved_R_50_FPN_24ep import dataloader, lr_multiplier, model, optimizer, train

use_quality_score(model)
train.output_dir = "./output/lvis_v1/qfl_improved_R_50_FPN_24ep"
