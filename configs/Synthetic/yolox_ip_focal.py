"""YOLOX-IP (YOLOXIP, focal loss) at a tiny width and depth on the embedded synthetic data,
on a CPU: configs/common/models/yolox_ip.py with depth 0.33 / width 0.25 (stem 16 channels,
head 64), images resized from 128 to 320 px (objects 40-110 px on strides 8-32, anchors
{3, 4} x stride as the recipe), BGR 0-255 without mean/std, batches padded to 32; the data,
batch (8), 2000 iterations (8 epochs of 250) and gradient clipping of improved_focal.py.

The recipe's optimisation at this scale (configs/common/yolox_recipe.py): nesterov SGD with
weight decay 5e-4 except on BatchNorm weights and non-classification biases, LR 0.02
(0.0025 per image, 8 x the recipe's: 2000 iterations from scratch), quadratic warm-up over
1 epoch, cosine to 0.05 x, flat for the last epoch; model EMA with decay 0.998 and tau 200
updates (the recipe's 0.9998 / 2000 average over ~5000 iterations, more than this run),
used for evaluation.

NOT built here (issue 26, point 2, to come): the recipe's augmentations (mosaic, random
perspective, mixup, HSV, random multi-scale resize: only a horizontal flip here) and its
repeat-factor sampler. Its twin yolox_ip_efl.py differs only in the loss."""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from ..common.models.yolox_ip import model, set_yolox_size
from ..common.yolox_recipe import lr_multiplier, optimizer
from .improved_focal import dataloader, train

set_yolox_size(model, depth=0.33, width=0.25)
model.num_classes = 120
SIZE = 320  # px, the longer (here: every) side

dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=SIZE, max_size=SIZE),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=SIZE, max_size=SIZE)]
train.output_dir = "./output/synthetic/yolox_ip_focal"

optimizer.lr = 0.02
lr_multiplier.update(warmup_epochs=1, min_lr_scale=0.05, flat_epochs=1)  # of train.epochs = 8
train.ema = dict(enabled=True, decay=0.998, tau=200)
