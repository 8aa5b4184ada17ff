"""YOLOX-IP-S with Equalized Focal Loss on LVIS v1 (gamma_b 2, s 4, alpha 0.25, as the
authors' efl_yolox_small.yaml). Published: AP 23.3 (APr 18.1, APc 21.2, APf 28.0), their
released efl_yolox_small.pth. Everything but the loss is focal_yolox_ip_s_300e.py."""

from ..common.efl import use_efl
from .focal_yolox_ip_s_300e import dataloader, lr_multiplier, model, optimizer, train

use_efl(model, train_dataset="lvis_v1_train", gamma_b=2.0, scale_factor=4.0, alpha=0.25)
train.output_dir = "./output/lvis_v1/efl_yolox_ip_s_300e"
