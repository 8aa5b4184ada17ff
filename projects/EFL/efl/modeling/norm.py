"""The EFL authors' "frozen" BatchNorm: running statistics fixed, affine weight and bias
trained (their ``freeze_bn``, a ``BatchNorm2d`` kept in eval mode)."""

from torch import nn

from detectron2.layers import FrozenBatchNorm2d

__all__ = ["FrozenStatsBatchNorm2d", "NORM_NAMES"]


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

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """``module`` with every ``BatchNorm2d`` (also inside it) replaced by this class,
        statistics and affine carried over (as Detectron2's
        ``FrozenBatchNorm2d.convert_frozen_batchnorm``, which freezes the affine too)."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            new = cls(module.num_features, module.eps)
            if module.affine:
                new.weight.data.copy_(module.weight.data)
                new.bias.data.copy_(module.bias.data)
            new.running_mean.copy_(module.running_mean)
            new.running_var.copy_(module.running_var)
            return new
        for name, child in module.named_children():
            new = cls.convert(child)
            if new is not child:
                module.add_module(name, new)
        return module


#: Norm names for ``MODEL.RESNETS.NORM`` that our YAML backbone builder resolves itself
#: (Detectron2's ``get_norm`` keeps its names in a dict local to the function: it cannot be
#: extended without a patch).
NORM_NAMES = {"FrozenStatsBN": FrozenStatsBatchNorm2d}
