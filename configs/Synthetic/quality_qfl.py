"""improved_focal.py as a quality-score detector (QualityATSSRetinaNet): no IoU branch, the
classification score trained with Quality Focal Loss (beta 2) against the IoU of the decoded
box. Its twin quality_eqfl.py differs only in the loss's scale factor (0 here: plain QFL)."""

from ..common.quality import use_quality_loss
from .improved_focal import dataloader, lr_multiplier, model, optimizer, train

use_quality_loss(model, train_dataset="synthetic_lt_train", gamma_b=2.0, scale_factor=0.0)
train.output_dir = "./output/synthetic/quality_qfl"
