"""Turn a stock RetinaNet/FCOS/ATSSRetinaNet config into its EQL or EQLv2 twin (the
long-tail baselines, docs/baselines.md): same everything, the loss in ``model.cls_loss``."""

from detectron2.config import LazyCall as L

from efl import EqualizationLoss, EqualizationLossV2
from efl.data.image_frequency import class_image_frequency
from efl.data.lvis import frequency_groups

from .efl import as_cls_loss_model


def use_eql(model, train_dataset: str, lambda_=0.0011, base_loss="focal"):
    """``model.cls_loss`` = EQL, lambda from the image frequencies of ``train_dataset``
    (theirs for LVIS v1: 0.0011), in place (as :func:`configs.common.efl.use_efl`)."""
    as_cls_loss_model(model)
    model.cls_loss = L(EqualizationLoss)(
        num_classes="${..num_classes}",
        image_frequency=L(class_image_frequency)(dataset_name=train_dataset),
        lambda_=lambda_,
        base_loss=base_loss,
    )
    return model


def use_eqlv2(model, train_dataset: str, gamma=12.0, mu=0.8, alpha=4.0, base_loss="focal"):
    """``model.cls_loss`` = EQLv2 (their gamma 12, mu 0.8, alpha 4), in place."""
    as_cls_loss_model(model)
    model.cls_loss = L(EqualizationLossV2)(
        num_classes="${..num_classes}",
        gamma=gamma,
        mu=mu,
        alpha=alpha,
        base_loss=base_loss,
        class_groups=L(frequency_groups)(dataset_name=train_dataset, required=False),
    )
    return model
