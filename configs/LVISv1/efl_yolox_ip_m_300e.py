"""YOLOX-IP-M with Equalized Focal Loss on LVIS v1 (the authors' efl_yolox_medium.yaml):
efl_yolox_ip_s_300e.py at depth 0.67 / width 0.75 (S and M share the data recipe).
Published: AP 30.0 (APr 23.8, APc 28.2, APf 34.7), their released efl_yolox_medium.pth."""

from ..common.data.yolox_lvis import yolox_lvis_dataloader
from ..common.models.yolox_ip import set_yolox_size
from .efl_yolox_ip_s_300e import lr_multiplier, model, optimizer, train

dataloader = yolox_lvis_dataloader("m")
set_yolox_size(model, "m")
train.output_dir = "./output/lvis_v1/efl_yolox_ip_m_300e"
