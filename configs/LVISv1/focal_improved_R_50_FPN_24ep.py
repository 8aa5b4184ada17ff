"""The EFL authors' improved one-stage detector (ATSSRetinaNet R-50-FPN) with focal loss on
LVIS v1: the baseline twin of efl_improved_R_50_FPN_24ep.py (identical but for the loss).

Recipe (the authors' table, row by row; where each is set):
- data: short side {640, 672, ..., 800}, max 1333, flip; test 800 / 1333
  (common/data/lvis_v1.py); repeat-factor sampling t = 0.001 with ceil rounding (below);
- input: RGB (the mapper's image_format, below; the model's normalisation is in
  common/models/atss.py); init from torchvision's ImageNet ResNet-50 (below: the URL's file
  is mapped onto the Detectron2 backbone on load, efl/convert/resnet.py);
- optimisation: SGD momentum 0.9, weight decay 1e-4 on every trained tensor, norms included
  (as the authors' optimizer; common/optim.py exempts norms); LR 0.02 at batch 16
  (linear scaling for other batch sizes: lr = 0.02 * total_batch_size / 16); linear warm-up
  over the first epoch from 0.001 x; total gradient L2 norm clipped at 35; 24 epochs over the
  RFS-expanded training set, LR x0.1 at the start of epochs 16 and 22 (below).
- The epochs are resolved to iterations at start-up from the loaded training set and its
  sampler and logged (efl.engine.plan_run): LVIS v1 train has 100,170 images;
  an epoch is its RFS-expanded set cut into global batches of 16.
"""

from detectron2.config import LazyCall as L

from efl.solver import multistep_in_epochs

from ..common.data.lvis_v1 import dataloader
from ..common.models.atss import model
from ..common.optim import SGD as optimizer
from ..common.train import train

model.num_classes = 1203

dataloader.train.total_batch_size = 16
dataloader.train.repeat_thresh = 0.001
dataloader.train.repeat_rounding = "ceil"  # the authors'; Detectron2's is "stochastic"
dataloader.train.mapper.image_format = "RGB"  # the test mapper follows it

optimizer.lr = 0.02  # at total_batch_size 16; scale linearly with the batch size
optimizer.momentum = 0.9
optimizer.weight_decay = 1e-4
optimizer.params.weight_decay_norm = None  # same decay for norms, as the authors

train.epochs = 24
train.max_iter = None  # set from train.epochs at start-up
train.clip_grad = dict(enabled=True, max_norm=35.0, norm_type=2.0)
train.eval_period = 0  # evaluate once, at the end
train.checkpointer.period = 5000
# torchvision's ImageNet ResNet-50 (the authors' resnet50-19c8e357.pth); a local copy of the
# file works too: train.init_checkpoint=/path/to/resnet50-19c8e357.pth
train.init_checkpoint = "https://download.pytorch.org/models/resnet50-19c8e357.pth"
train.output_dir = "./output/lvis_v1/focal_improved_R_50_FPN_24ep"

lr_multiplier = L(multistep_in_epochs)(
    milestones=[16, 22],
    warmup_epochs=1,
    warmup_factor=0.001,
)
