"""configs/Custom/improved_focal.py with Equalized Focal Loss: the LVIS recipe
configs/LVISv1/efl_improved_R_50_FPN_24ep.py on your own data, with the same command-line keys
(dataset.train_json, dataset.val_json, dataset.image_root)."""

from ..common.data.custom import dataset, use_custom_dataset
from ..LVISv1.efl_improved_R_50_FPN_24ep import dataloader, lr_multiplier, model, optimizer, train

use_custom_dataset(dataloader, model)
train.output_dir = "./output/custom/improved_efl"
