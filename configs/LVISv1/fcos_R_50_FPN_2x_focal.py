"""Stock Detectron2 FCOS R-50-FPN (focal loss) on LVIS v1, 2x schedule, RFS t=0.001.
Same data pipeline and schedule as retinanet_R_50_FPN_2x_focal.py."""

from ..common.models.fcos import model
from .retinanet_R_50_FPN_2x_focal import dataloader, lr_multiplier, optimizer, train

model.num_classes = 1203
model.test_score_thresh = 0.0001
model.max_detections_per_image = 300
train.output_dir = "./output/lvis_v1/fcos_R_50_FPN_2x_focal"
