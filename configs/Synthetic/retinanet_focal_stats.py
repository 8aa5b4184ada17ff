"""The focal-loss twin of retinanet_efl.py that records EFL's per-class gradient
statistics: the same EFLRetinaNet, its cls_loss a SigmoidFocalLoss(record_statistics=True)
(alpha 0.25, gamma 2, the same class_groups) instead of EqualizedFocalLoss; nothing else
differs. It trains as retinanet_focal.py does (the tap leaves the loss and its gradient
unchanged) and records g, so the g-vs-frequency picture has its focal-loss curve."""

from detectron2.config import LazyCall as L

from efl import SigmoidFocalLoss

from .retinanet_efl import dataloader, lr_multiplier, model, optimizer, train

model.cls_loss = L(SigmoidFocalLoss)(
    num_classes="${..num_classes}",
    alpha="${..focal_loss_alpha}",
    gamma="${..focal_loss_gamma}",
    class_groups=model.cls_loss.class_groups,
    record_statistics=True,
)
train.output_dir = "./output/synthetic/retinanet_focal_stats"
