"""retinanet_focal.py on the family variant of the embedded data (synthetic_lt_families:
16 families of a frequent parent and three rare or common relatives that share its shape
and colour and differ in a small mark, plus 56 classes as in synthetic_lt; efl.data.builtin
FAMILY_DATA). Its twin retinanet_efl_families.py differs only in the loss."""

from .retinanet_focal import dataloader, lr_multiplier, model, optimizer, train

dataloader.train.dataset.names = "synthetic_lt_families_train"
dataloader.test.dataset.names = "synthetic_lt_families_val"
train.output_dir = "./output/synthetic/retinanet_focal_families"
