"""configs/Custom/retinanet_focal.py with Equalized Focal Loss: the LVIS recipe
configs/LVISv1/retinanet_R_50_FPN_2x_efl.py on your own data, with the same command-line keys
(dataset.train_json, dataset.val_json, dataset.image_root)."""

from ..common.data.custom import dataset, use_custom_dataset
from ..LVISv1.retinanet_R_50_FPN_2x_efl import dataloader, lr_multiplier, model, optimizer, train

use_custom_dataset(dataloader, model)
train.output_dir = "./output/custom/retinanet_efl"
