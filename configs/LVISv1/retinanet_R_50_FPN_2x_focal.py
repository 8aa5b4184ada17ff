"""Stock Detectron2 RetinaNet R-50-FPN (focal loss) on LVIS v1, 2x schedule, RFS t=0.001.

180k iterations at batch 16 (= 2x of Detectron2's 90k "1x"), LR 0.01 (Detectron2's
RetinaNet base LR at batch 16), x0.1 at 120k and 160k, 1000 warm-up iterations.
"""

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..common.data.lvis_v1 import dataloader
from ..common.models.retinanet import model
from ..common.optim import SGD as optimizer
from ..common.train import train

model.num_classes = 1203
# LVIS: keep low-scoring detections of rare classes; up to 300 per image.
model.test_score_thresh = 0.0001
model.test_topk_candidates = 1000
model.max_detections_per_image = 300

optimizer.lr = 0.01

train.max_iter = 180000
train.eval_period = 20000
train.checkpointer.period = 10000
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "./output/lvis_v1/retinanet_R_50_FPN_2x_focal"

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[120000, 160000], num_updates=train.max_iter
    ),
    warmup_length=1000 / train.max_iter,
    warmup_factor=0.001,
)
