"""YOLOX-IP (YOLOXIP, focal loss) at a tiny width and depth on the embedded synthetic data,
on a CPU: configs/common/models/yolox_ip.py with depth 0.33 / width 0.25 (stem 16 channels,
head 64), images resized from 128 to 320 px (objects 40-110 px on strides 8-32, anchors
{3, 4} x stride as the recipe), BGR 0-255 without mean/std, batches padded to 32; the data,
batch (8), optimiser (SGD lr 0.02), 2000 iterations and epoch schedule of improved_focal.py.

NOT built here (issue 26, point 2, to come): the recipe's augmentations (mosaic, random
perspective, mixup, HSV, random multi-scale resize: only a horizontal flip here), its model
EMA, its repeat-factor sampler, its schedule (nesterov SGD, quadratic warm-up, cosine,
weight-decay exceptions). Its twin yolox_ip_efl.py differs only in the loss."""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from ..common.models.yolox_ip import model, set_yolox_size
from .improved_focal import dataloader, lr_multiplier, optimizer, train

set_yolox_size(model, depth=0.33, width=0.25)
model.num_classes = 120
SIZE = 320  # px, the longer (here: every) side

dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=SIZE, max_size=SIZE),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=SIZE, max_size=SIZE)]
train.output_dir = "./output/synthetic/yolox_ip_focal"
