"""Turn an ATSSRetinaNet config into its quality-score variant (QualityATSSRetinaNet: no IoU
branch, classification trained with QFL against the IoU of the decoded box), the rest of
the recipe unchanged; ``use_eqfl`` then gives it Equalized Quality Focal Loss."""

from detectron2.config import LazyCall as L

from efl import EqualizedQualityFocalLoss, QualityFocalLoss
from efl.data.lvis import frequency_groups
from efl.modeling import QualityATSSRetinaNet, QualityHead


def use_quality_score(model):
    """Switch ``model`` (a LazyCall of ATSSRetinaNet) in place: QFL, beta =
    ``focal_loss_gamma`` (2)."""
    model._target_ = QualityATSSRetinaNet
    model.head._target_ = QualityHead
    model.cls_loss = L(QualityFocalLoss)(num_classes="${..num_classes}", beta="${..focal_loss_gamma}")
    return model


def use_eqfl(model, train_dataset: str, gamma_b=2.0, scale_factor=8.0):
    """Give ``model`` (a quality-score config) the EQFL module as ``cls_loss``, in place of
    QFL."""
    model.cls_loss = L(EqualizedQualityFocalLoss)(
        num_classes="${..num_classes}",
        gamma_b=gamma_b,
        scale_factor=scale_factor,
        class_groups=L(frequency_groups)(dataset_name=train_dataset, required=False),
    )
    return model
