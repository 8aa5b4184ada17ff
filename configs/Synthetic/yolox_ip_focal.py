"""YOLOX-IP (YOLOXIP, focal loss) at a tiny width and depth on the embedded synthetic data,
on a CPU: configs/common/models/yolox_ip.py with depth 0.33 / width 0.25 (stem 16 channels,
head 64), BGR 0-255 without mean/std, batches padded to 32; the data, batch (8), 2000
iterations (8 epochs of 250) and gradient clipping of improved_focal.py. The recipe at
this scale:

- augmentations (efl.data.yolox_aug): mosaic -> random affine -> mixup -> HSV -> flip ->
  random multi-scale square resize at half their scale, 320 px instead of 640 (longer side
  240..400 px in steps of 16); mosaic / affine / mixup off for the last epoch (their last
  15 of 300), from iteration 1750. Test: longer side to 320 px (the 128 px images
  upscaled: objects 40-110 px on strides 8-32, anchors {3, 4} x stride as the recipe);
- optimisation (configs/common/yolox_recipe.py): nesterov SGD, weight decay 5e-4 except on
  BatchNorm weights and non-classification biases, LR 0.02 (0.0025 per image, 8 x the
  recipe's: 2000 iterations from scratch), quadratic warm-up over 1 epoch, cosine to
  0.05 x, flat for the last epoch;
- model EMA, decay 0.998 and tau 200 updates (the recipe's 0.9998 / 2000 average over
  ~5000 iterations, more than this run), used for evaluation.

Not here: the repeat-factor sampler (the loss alone makes the difference). Its twin
yolox_ip_efl.py differs only in the loss."""

from detectron2.config import LazyCall as L

from efl.data.yolox_aug import LongestSideResize, YOLOXTrainMapper

from ..common.models.yolox_ip import model, set_yolox_size
from ..common.yolox_recipe import lr_multiplier, optimizer
from .improved_focal import dataloader, train

set_yolox_size(model, depth=0.33, width=0.25)
model.num_classes = 120
SIZE = 320  # px, the longer (here: every) side

dataloader.train.mapper = L(YOLOXTrainMapper)(
    size="s",
    input_size=SIZE,
    no_aug_from_iter=1750,  # the last epoch of 8, with the flat LR (theirs: 15 of 300)
    image_format="BGR",
)
dataloader.train.aspect_ratio_grouping = False  # their batch sampler "base"
dataloader.test.mapper.augmentations = [L(LongestSideResize)(max_size=SIZE)]
train.output_dir = "./output/synthetic/yolox_ip_focal"

optimizer.lr = 0.02
lr_multiplier.update(warmup_epochs=1, min_lr_scale=0.05, flat_epochs=1)  # of train.epochs = 8
train.ema = dict(enabled=True, decay=0.998, tau=200)
