"""YOLOX-IP-M with Equalized Quality Focal Loss on LVIS v1 (the authors'
eqfl_yolox_medium.yaml): eqfl_yolox_ip_s_300e.py at depth 0.67 / width 0.75 (S and M share
the data recipe). Published: AP 31.0 (APr 24.0, APc 29.1, APf 36.2), their released
eqfl_yolox_medium.pth."""

from ..common.data.yolox_lvis import yolox_lvis_dataloader
from ..common.models.yolox_ip import set_yolox_size
from .eqfl_yolox_ip_s_300e import lr_multiplier, model, optimizer, train

dataloader = yolox_lvis_dataloader("m")
set_yolox_size(model, "m")
train.output_dir = "./output/lvis_v1/eqfl_yolox_ip_m_300e"
