"""RetinaNet R-50-FPN with focal loss (stock Detectron2 RetinaNet) on your own data: the
LVIS recipe configs/LVISv1/retinanet_R_50_FPN_2x_focal.py (ImageNet-initialised R-50, 2x
schedule, RFS t=0.001, 300 detections per image) with the dataset from the command line:

    python train_net.py --config-file configs/Custom/retinanet_focal.py \
        dataset.train_json=OUT/train.json dataset.val_json=OUT/val.json dataset.image_root=IMAGES

OUT/*.json are written by tools/prepare_long_tail.py; model.num_classes follows from them."""

from ..common.data.custom import dataset, use_custom_dataset
from ..LVISv1.retinanet_R_50_FPN_2x_focal import dataloader, lr_multiplier, model, optimizer, train

use_custom_dataset(dataloader, model)
train.output_dir = "./output/custom/retinanet_focal"
