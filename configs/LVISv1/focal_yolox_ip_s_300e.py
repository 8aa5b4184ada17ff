"""YOLOX-IP-S with focal loss on LVIS v1, the EFL authors' recipe (United-Perception
52aaeb9, configs/det/efl/efl_yolox_small.yaml) with the classification loss left as focal
loss: the twin of efl_yolox_ip_s_300e.py they do not publish (no published figure).

Model configs/common/models/yolox_ip.py; data configs/common/data/yolox_lvis.py (mosaic,
affine, mixup, HSV, flip, multi-scale resize; the last 15 epochs without mosaic, affine
and mixup; repeat factors t 0.001 rounded up); optimisation and model EMA
configs/common/yolox_recipe.py. 16 GPUs x 8 images. An epoch is THEIR epoch, 777
iterations (their sampler's length is the non-repeated image count; efl.data.up_epochs),
so the schedule is given in iterations: 300 x 777. For another GPU count, pass
``num_gpus`` to yolox_lvis_dataloader and yolox_epoch_iterations and scale optimizer.lr
(LR_PER_IMAGE x the total batch)."""

from ..common.data.yolox_lvis import EPOCHS, yolox_epoch_iterations, yolox_lvis_dataloader
from ..common.models.yolox_ip import model
from ..common.yolox_recipe import lr_multiplier, optimizer, train

dataloader = yolox_lvis_dataloader("s")
model.num_classes = 1203

EPOCH_ITERS = yolox_epoch_iterations()
train.epochs = None  # their epochs are not passes over the repeated set: given below
train.max_iter = EPOCHS * EPOCH_ITERS
lr_multiplier.epoch_starts = [e * EPOCH_ITERS for e in range(EPOCHS + 1)]
train.checkpointer.period = 10 * EPOCH_ITERS
train.output_dir = "./output/lvis_v1/focal_yolox_ip_s_300e"
