"""The EFL authors' improved detector (ATSSRetinaNet R-50-FPN) with Equalized Focal Loss on your own
data: the LVIS recipe configs/LVISv1/efl_improved_R_50_FPN_24ep.py (ImageNet-initialised
R-50, 24 epochs over the RFS-expanded training set, resolved at start-up) with the dataset
from the command line:

    python train_net.py --config-file configs/Custom/improved_efl.py \
        dataset.train_json=OUT/train.json dataset.val_json=OUT/val.json dataset.image_root=IMAGES

OUT/*.json are written by tools/prepare_long_tail.py; model.num_classes follows from them."""

from ..common.data.custom import dataset, use_custom_dataset
from ..LVISv1.efl_improved_R_50_FPN_24ep import dataloader, lr_multiplier, model, optimizer, train

use_custom_dataset(dataloader, model)
train.output_dir = "./output/custom/improved_efl"
