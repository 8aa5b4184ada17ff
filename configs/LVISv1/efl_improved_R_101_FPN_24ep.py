"""The EFL authors' LVIS v1 recipe, R-101: efl_improved_R_50_FPN_24ep.py with a ResNet-101
backbone. Published: box AP 29.2 (APr 23.5, APc 27.4, APf 33.8) on LVIS v1 val."""

from .efl_improved_R_50_FPN_24ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth"  # torchvision
train.output_dir = "./output/lvis_v1/efl_improved_R_101_FPN_24ep"
