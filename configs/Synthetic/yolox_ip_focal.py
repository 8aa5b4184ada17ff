"""YOLOX-IP (YOLOXIP, focal loss) at a tiny width and depth on the embedded synthetic data,
on a CPU: configs/common/models/yolox_ip.py with depth 0.33 / width 0.25 (stem 16 channels,
head 64), BGR 0-255 without mean/std, batches padded to 32; the data, batch (8), optimiser
(SGD lr 0.02), 2000 iterations and epoch schedule of improved_focal.py.

Augmentations: the recipe's (efl.data.yolox_aug: mosaic -> random affine -> mixup -> HSV ->
flip -> random multi-scale square resize) at half their scale, 320 px instead of 640:
mosaic tiles fitted into 320 px, 320 px after the affine, longer side 240..400 px (steps of
16); mosaic / affine / mixup off for the last 5% of the run (their last 15 of 300 epochs):
from iteration 1900. Test: longer side to 320 px (the 128 px images upscaled: objects
40-110 px on strides 8-32, anchors {3, 4} x stride as the recipe).

NOT built here (issue 26, point 2, to come): the recipe's model EMA, its repeat-factor
sampler (the loss alone makes the difference here), its schedule (nesterov SGD, quadratic
warm-up, cosine, weight-decay exceptions). Its twin yolox_ip_efl.py differs only in the
loss."""

from detectron2.config import LazyCall as L

from efl.data.yolox_aug import LongestSideResize, YOLOXTrainMapper

from ..common.models.yolox_ip import model, set_yolox_size
from .improved_focal import dataloader, lr_multiplier, optimizer, train

set_yolox_size(model, depth=0.33, width=0.25)
model.num_classes = 120
SIZE = 320  # px, the longer (here: every) side

dataloader.train.mapper = L(YOLOXTrainMapper)(
    size="s",
    input_size=SIZE,
    no_aug_from_iter=1900,  # 2000 iterations x 285 / 300
    image_format="BGR",
)
dataloader.train.aspect_ratio_grouping = False  # their batch sampler "base"
dataloader.test.mapper.augmentations = [L(LongestSideResize)(max_size=SIZE)]
train.output_dir = "./output/synthetic/yolox_ip_focal"
