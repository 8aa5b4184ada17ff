"""Stock Detectron2 RetinaNet (focal loss) on the embedded long-tailed synthetic dataset:
a half-width ResNet-18-FPN (P3-P5) trained from scratch on CPU (~0.3 s/iteration at
batch 8 on 2 cores, ~10 minutes for 2000 iterations). Its twin retinanet_efl.py
differs only in the classification loss. The data (synthetic_lt_*) is generated under
$DETECTRON2_DATASETS/synthetic_lt on first use."""

from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.resnet import BasicBlock
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from efl.data.lvis import build_train_loader
from efl.evaluation import FastLVISEvaluator

from ..common.models.retinanet import model
from ..common.optim import SGD as optimizer
from ..common.train import train

# ----- model: a half-width ResNet-18 + FPN P3-P5 (64 channels), BatchNorm, from scratch --
model.num_classes = 120
WIDTHS = [32, 64, 128, 256]  # ResNet-18's stage widths halved: ~4x fewer FLOPs on CPU
bottom_up = model.backbone.bottom_up
bottom_up.stem = L(BasicStem)(in_channels=3, out_channels=WIDTHS[0], norm="BN")
bottom_up.stages = [
    L(ResNet.make_stage)(
        block_class=BasicBlock,
        num_blocks=2,
        in_channels=WIDTHS[max(i - 1, 0)],
        out_channels=WIDTHS[i],
        stride_per_block=[1 if i == 0 else 2, 1],
        norm="BN",
    )
    for i in range(4)
]
bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.backbone.top_block = None
model.head_in_features = ["p3", "p4", "p5"]
model.head.input_shape = [{"channels": 64}] * 3
model.head.conv_dims = [64, 64]
model.head.num_anchors = 3
# Objects are 16-44 px, roughly square: 3 scales, aspect 1, on strides 8-32.
model.anchor_generator.sizes = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [16, 32, 64]]
model.anchor_generator.aspect_ratios = [1.0]
model.anchor_generator.strides = [8, 16, 32]
model.pixel_std = [57.375, 57.120, 58.395]  # from scratch: normalise the input
model.test_score_thresh = 0.0001
model.test_topk_candidates = 1000
model.max_detections_per_image = 300

# ----- data -----------------------------------------------------------------------------
dataloader = OmegaConf.create()
dataloader.train = L(build_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="synthetic_lt_train", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=True, augmentations=[L(T.RandomFlip)(horizontal=True)], image_format="BGR"
    ),
    total_batch_size=8,
    num_workers=1,
    repeat_thresh=None,  # no repeat-factor sampling: the loss alone makes the difference
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="synthetic_lt_val", filter_empty=False),
    mapper=L(DatasetMapper)(is_train=False, augmentations=[], image_format="BGR"),
    num_workers=1,
)
dataloader.evaluator = L(FastLVISEvaluator)(dataset_name="${..test.dataset.names}", max_dets_per_image=300)

# ----- schedule -------------------------------------------------------------------------
optimizer.lr = 0.02
train.max_iter = 2000
train.eval_period = 0  # evaluate once, at the end
train.checkpointer.period = 500
train.log_period = 20
train.device = "cpu"
train.seed = 0
train.output_dir = "./output/synthetic/retinanet_focal"
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[1500, 1850], num_updates=train.max_iter
    ),
    warmup_length=200 / train.max_iter,
    warmup_factor=0.001,
)
