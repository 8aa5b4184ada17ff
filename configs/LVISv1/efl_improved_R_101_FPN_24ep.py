"""The EFL authors' LVIS v1 recipe, R-101: efl_improved_R_50_FPN_24ep.py with a ResNet-101
backbone. Published: box AP 29.2 (APr 23.5, APc 27.4, APf 33.8) on LVIS v1 val."""

from .efl_improved_R_50_FPN_24ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.output_dir = "./output/lvis_v1/efl_improved_R_101_FPN_24ep"
