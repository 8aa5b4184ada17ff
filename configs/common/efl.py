"""Turn a stock RetinaNet/FCOS/ATSSRetinaNet config into its EFL twin: same everything,
EFL loss (``model.cls_loss``)."""

from detectron2.config import LazyCall as L

from detectron2.modeling import RetinaNet

from efl import EFLFCOS, ATSSRetinaNet, EFLRetinaNet, EqualizedFocalLoss
from efl.compat import FCOS
from efl.data.lvis import frequency_groups


def as_cls_loss_model(model):
    """A stock RetinaNet or FCOS LazyCall becomes its subclass that holds a ``cls_loss``
    (EFLRetinaNet, EFLFCOS), in place; an ATSSRetinaNet (or a subclass: YOLOXIP) already
    holds one."""
    if not issubclass(model._target_, ATSSRetinaNet):
        model._target_ = {RetinaNet: EFLRetinaNet, FCOS: EFLFCOS}[model._target_]
    return model


def use_efl(model, train_dataset: str, gamma_b=2.0, scale_factor=8.0, alpha=0.25):
    """Give ``model`` the EFL module as ``cls_loss``, in place. A stock RetinaNet or FCOS
    becomes its subclass that holds one (EFLRetinaNet, EFLFCOS); an ATSSRetinaNet (or a
    subclass: YOLOXIP) keeps its class (its focal loss, a SigmoidFocalLoss, is the module
    replaced)."""
    as_cls_loss_model(model)
    model.cls_loss = L(EqualizedFocalLoss)(
        num_classes="${..num_classes}",
        gamma_b=gamma_b,
        scale_factor=scale_factor,
        alpha=alpha,
        class_groups=L(frequency_groups)(dataset_name=train_dataset, required=False),
    )
    return model
