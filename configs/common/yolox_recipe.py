"""The optimisation side of the YOLOX-IP recipe (the EFL authors'
configs/det/efl/{efl,eqfl}_yolox_{small,medium}.yaml, United-Perception 52aaeb9:
``trainer`` and ``ema``), for 300 epochs:

- SGD, nesterov, momentum 0.9, LR 0.0003125 per image (0.04 at the authors' 16 x 8 = 128
  images; set ``optimizer.lr = LR_PER_IMAGE * dataloader.train.total_batch_size`` for
  another batch), weight decay 5e-4 except on BatchNorm weights and on every bias but the
  classification outputs' (their ``yolov5_except``; efl.solver.yolox_param_groups);
- LR: quadratic warm-up from 0 over 5 epochs, cosine to 0.05 x until 15 epochs before the
  end, flat for those 15 (their ``yolox_base`` / ``yolox_cos`` / ``YoloXCosineLR``;
  efl.solver.yolox_cosine_in_epochs), epochs resolved from the training loader;
- model EMA, decay 0.9998 x (1 - exp(-t / 2000)), over every float state entry (BN
  statistics and the EFL state included), used for evaluation (efl.engine.ema);
- before evaluating, BatchNorm statistics of the model and the EMA averaged over the GPUs
  (their ``runtime.async_norm: true``; efl.engine.norm_sync);
- no gradient clipping (theirs has none for YOLOX-IP).

Used as ``from ..common.yolox_recipe import lr_multiplier, optimizer, train``; the model
(configs/common/models/yolox_ip.py) and the data come from their own files.
"""

import torch
from detectron2.config import LazyCall as L

from efl.solver import yolox_cosine_in_epochs, yolox_param_groups

from .train import train

LR_PER_IMAGE = 0.0003125  # their lr, multiplied by the total batch size (lr_scale)
BATCH = 128  # 16 GPUs x 8 images
WEIGHT_DECAY = 5e-4

optimizer = L(torch.optim.SGD)(
    params=L(yolox_param_groups)(
        # params.model is set by the trainer
        weight_decay=WEIGHT_DECAY,
        decayed_bias_modules=["head.cls_score"],  # their except_keys: roi_head.cls_preds.{0,1,2}
    ),
    lr=LR_PER_IMAGE * BATCH,
    momentum=0.9,
    nesterov=True,
    weight_decay=WEIGHT_DECAY,
)

lr_multiplier = L(yolox_cosine_in_epochs)(warmup_epochs=5, min_lr_scale=0.05, flat_epochs=15)

train.epochs = 300
train.max_iter = None  # set from train.epochs at start-up
train.clip_grad = dict(enabled=False, max_norm=35.0, norm_type=2.0)
train.ema = dict(enabled=True, decay=0.9998, tau=2000)
train.all_reduce_norm = True
train.eval_period = 0  # evaluate once, at the end (with the EMA)
