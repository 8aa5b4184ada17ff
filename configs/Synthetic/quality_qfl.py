"""improved_focal.py as a quality-score detector (QualityATSSRetinaNet): no IoU branch, the
classification score trained with Quality Focal Loss (beta 2) against the IoU of the decoded
box; the score at test is the class probability. Its twin quality_eqfl.py differs only in
the loss."""

from ..common.quality import use_quality_score
from .improved_focal import dataloader, lr_multiplier, model, optimizer, train

use_quality_score(model)
train.output_dir = "./output/synthetic/quality_qfl"
