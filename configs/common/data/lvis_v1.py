"""LVIS v1 data: Detectron2's built-in lvis_v1_train / lvis_v1_val (under
$DETECTRON2_DATASETS), repeat-factor sampling t=0.001, LVIS evaluation with 300 detections
per image (FastLVISEvaluator: lvis-api's numbers; backend="lvis" runs lvis-api itself)."""

from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
from efl.evaluation import FastLVISEvaluator

from efl.data.lvis import build_train_loader

dataloader = OmegaConf.create()

dataloader.train = L(build_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="lvis_v1_train", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=(640, 672, 704, 736, 768, 800),
                sample_style="choice",
                max_size=1333,
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        use_instance_mask=False,
    ),
    total_batch_size=16,
    num_workers=4,
    repeat_thresh=0.001,
    repeat_rounding="stochastic",  # Detectron2's; "ceil" is the EFL authors'
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="lvis_v1_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(FastLVISEvaluator)(
    dataset_name="${..test.dataset.names}",
    max_dets_per_image=300,
)
