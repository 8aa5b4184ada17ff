"""The authors' improved detector (ATSSRetinaNet, focal loss) on the embedded synthetic
data, at the scale of retinanet_focal.py so the two compare at equal iterations: the same
half-width ResNet-18-FPN P3-P5 backbone, data, batch (8) and 2000 iterations (8 epochs of
250), with the improved detector's parts: ATSS (top 18), GroupNorm towers, IoU branch,
GIoU loss, prior 0.001, 2 anchors per location, gradient clipping at 35, a schedule in
epochs (x0.1 at epochs 6 and 7) and its test settings (top 6000, NMS 0.5, 300 dets).

Scaled to the data (objects are 16-44 px on strides 8-32): anchor sizes {2, 2.67} x stride
instead of {6, 8}, 2 convs per tower (as retinanet_focal.py) instead of 4. Its twin
improved_efl.py differs only in the classification loss."""

from detectron2.config import LazyCall as L

from efl.solver import multistep_in_epochs

from ..common.models.atss import model
from .retinanet_focal import dataloader, optimizer, train
from .retinanet_focal import model as retinanet

model.backbone = retinanet.backbone  # half-width ResNet-18, FPN P3-P5, 64 channels
model.head_in_features = ["p3", "p4", "p5"]
model.head.input_shape = [{"channels": 64}] * 3
model.head.conv_dims = [64, 64]
STRIDES = [8, 16, 32]
model.anchor_generator.strides = STRIDES
model.anchor_generator.sizes = [[2 * s, 8 / 3 * s] for s in STRIDES]
model.num_classes = 120
model.pixel_mean = retinanet.pixel_mean  # its BGR input, as retinanet_focal.py
model.pixel_std = retinanet.pixel_std
model.input_format = retinanet.input_format

train.epochs = 8  # 2000 images / batch 8 = 250 iterations per epoch
train.max_iter = None
train.clip_grad = dict(enabled=True, max_norm=35.0, norm_type=2.0)
train.output_dir = "./output/synthetic/improved_focal"

lr_multiplier = L(multistep_in_epochs)(
    milestones=[6, 7],
    warmup_epochs=0.8,  # 200 iterations, as retinanet_focal.py
    warmup_factor=0.001,
)
