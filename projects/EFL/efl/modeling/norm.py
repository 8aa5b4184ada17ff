"""The EFL authors' "frozen" BatchNorm: running statistics fixed, affine weight and bias
trained (their ``freeze_bn``, a ``BatchNorm2d`` kept in eval mode)."""

from torch import nn

from detectron2.layers import FrozenBatchNorm2d

__all__ = ["FrozenStatsBatchNorm2d"]


class FrozenStatsBatchNorm2d(FrozenBatchNorm2d):
    """Detectron2's :class:`FrozenBatchNorm2d` whose ``weight`` and ``bias`` are
    parameters (trained) while ``running_mean`` and ``running_var`` stay buffers (never
    updated, also under ``model.train()``). eps 1e-5 as theirs and torchvision's.

    Give the class itself as ``norm`` (Detectron2's ``get_norm`` calls it with the channel
    count). ``ResNet(freeze_at=2)`` still freezes the stem and res2 entirely (their
    parameters get ``requires_grad=False``), as the authors freeze layer0 and layer1.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps)
        weight, bias = self.weight, self.bias
        del self.weight, self.bias  # buffers in the parent
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())

