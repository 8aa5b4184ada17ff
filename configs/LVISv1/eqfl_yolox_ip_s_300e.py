"""YOLOX-IP-S with Equalized Quality Focal Loss on LVIS v1 (gamma_b 2, s 4, as the authors'
eqfl_yolox_samll.yaml): QualityYOLOXIP, the IoU branch kept, each positive's class target
the IoU of its decoded box. Published: AP 24.2 (APr 16.3, APc 22.7, APf 29.4), their
released eqfl_yolox_small.pth. Everything but the loss is focal_yolox_ip_s_300e.py."""

from ..common.models.yolox_ip import use_eqfl_quality
from .focal_yolox_ip_s_300e import dataloader, lr_multiplier, model, optimizer, train

use_eqfl_quality(model, train_dataset="lvis_v1_train", gamma_b=2.0, scale_factor=4.0)
train.output_dir = "./output/lvis_v1/eqfl_yolox_ip_s_300e"
