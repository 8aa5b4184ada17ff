"""EFL RetinaNet R-101-FPN on LVIS v1 (retinanet_R_50_FPN_2x_efl.py with ResNet-101)."""

from .retinanet_R_50_FPN_2x_efl import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.output_dir = "./output/lvis_v1/retinanet_R_101_FPN_2x_efl"
