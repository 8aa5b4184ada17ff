"""LVIS v1 data of the YOLOX-IP recipe (the EFL authors' configs/det/efl/
{efl,eqfl}_yolox_{small,medium}.yaml, ``dataset:`` and the ``yolox_noaug`` hook):

- train: images with annotations (their LVIS dataset lists only those: 99388), BGR 0-255,
  mosaic -> random affine -> mixup -> HSV -> flip -> longer side to 480..800 (multiples of
  32) padded square (efl.data.yolox_aug), mosaic / affine / mixup off for the last 15 of
  300 epochs; repeat-factor sampling t 0.001 rounded up, no aspect-ratio grouping;
  8 images per GPU x 16 GPUs, 8 workers;
- test: lvis_v1_val, longer side to 640 (OpenCV bilinear), LVIS AP with 300 detections.

An epoch of their schedule is ceil(ceil(99388 / gpus) / 8) iterations (efl.data.up_epochs:
their sampler's length is the non-repeated image count): 777 on 16 GPUs. The recipe's
``train.max_iter`` and schedule must use :func:`yolox_epoch_iterations` too.

Usage: ``dataloader = yolox_lvis_dataloader("s")`` (or "m"); S and M use the same data
recipe (the only textual difference has no effect: efl/data/yolox_aug.py).
"""

from omegaconf import OmegaConf

from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
from efl.data.image_frequency import LVIS_V1_TRAIN_ANNOTATED_IMAGES
from efl.data.lvis import build_train_loader
from efl.data.up_epochs import no_aug_start, schedule_epoch_iterations
from efl.data.yolox_aug import LongestSideResize, YOLOXTrainMapper, yolox_aug_params

EPOCHS = 300  # trainer.max_epoch
NO_AUG_EPOCHS = 15  # trainer.lr_scheduler.kwargs.no_aug_epoch / hooks: yolox_noaug
IMAGES_PER_GPU = 8  # batch_sampler.kwargs.batch_size
NUM_GPUS = 16  # their benchmark (16 GPUs x 8 images)


def yolox_epoch_iterations(images_per_gpu: int = IMAGES_PER_GPU, num_gpus: int = NUM_GPUS) -> int:
    """Iterations of one epoch of their schedule on LVIS v1 train (777 on 16 x 8)."""
    return schedule_epoch_iterations(LVIS_V1_TRAIN_ANNOTATED_IMAGES, images_per_gpu, num_gpus)


def yolox_lvis_dataloader(size: str = "s", images_per_gpu: int = IMAGES_PER_GPU,
                          num_gpus: int = NUM_GPUS, input_size: int = 640):
    """The ``dataloader`` node (train, test, evaluator) of YOLOX-IP ``size`` ("s", "m")."""
    from efl.evaluation import FastLVISEvaluator

    yolox_aug_params(size, input_size)  # an unknown size fails here, at config load
    dataloader = OmegaConf.create()
    dataloader.train = L(build_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names="lvis_v1_train", filter_empty=True),
        mapper=L(YOLOXTrainMapper)(
            size=size,
            input_size=input_size,
            no_aug_from_iter=no_aug_start(yolox_epoch_iterations(images_per_gpu, num_gpus),
                                          EPOCHS, NO_AUG_EPOCHS),
            image_format="BGR",
        ),
        total_batch_size=images_per_gpu * num_gpus,
        num_workers=8,  # dataloader.kwargs.num_workers
        repeat_thresh=0.001,  # repeat_factor: t
        repeat_rounding="ceil",  # ri_mode: ceil (pn 0.5: the square root)
        aspect_ratio_grouping=False,  # their batch sampler "base"
    )
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="lvis_v1_val", filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(LongestSideResize)(max_size=input_size)],  # test_resize: 640
            image_format="BGR",
        ),
        num_workers=4,
    )
    dataloader.evaluator = L(FastLVISEvaluator)(
        dataset_name="${..test.dataset.names}", max_dets_per_image=300
    )
    return dataloader
