"""The EFL authors' improved detector with focal loss, R-101: focal_improved_R_50_FPN_24ep.py
with a ResNet-101 backbone (the baseline twin of efl_improved_R_101_FPN_24ep.py)."""

from .focal_improved_R_50_FPN_24ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth"  # torchvision
train.output_dir = "./output/lvis_v1/focal_improved_R_101_FPN_24ep"
