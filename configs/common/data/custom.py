"""Your own LVIS-format data (written by tools/prepare_long_tail.py) for the LVIS recipes:
the files come from command-line keys, registered as ``<dataset.name>_{train,val}`` when
the run is set up (efl.data.custom.setup_custom_dataset), which also sets
model.num_classes from the training file."""

from omegaconf import OmegaConf

dataset = OmegaConf.create(
    dict(name="custom", train_json=None, val_json=None, image_root=None)
)


def use_custom_dataset(dataloader, model):
    """Point an LVIS recipe's loaders, evaluator and EFL class groups at the dataset node."""
    dataloader.train.dataset.names = "${dataset.name}_train"
    dataloader.test.dataset.names = "${dataset.name}_val"
    model.num_classes = None  # set from dataset.train_json at run set-up
    if "class_groups" in model.get("cls_loss", {}):
        model.cls_loss.class_groups.dataset_name = "${dataset.name}_train"
