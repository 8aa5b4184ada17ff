"""FPN top block with the extra levels P6 and P7 made from C5."""

import torch.nn.functional as F

from detectron2.modeling.backbone.fpn import LastLevelP6P7 as _D2LastLevelP6P7

__all__ = ["LastLevelP6P7"]


class LastLevelP6P7(_D2LastLevelP6P7):
    """Detectron2's ``LastLevelP6P7`` (P6 = 3x3 stride-2 conv of ``in_feature``, P7 = 3x3
    stride-2 conv of P6) with the ReLU between P6 and P7 made optional.

    Detectron2 (like the RetinaNet paper) applies ReLU to P6 before P7; the EFL authors'
    improved detector does not (``relu_before_p7=False``).
    """

    def __init__(self, in_channels, out_channels, in_feature="res5", relu_before_p7=True):
        super().__init__(in_channels, out_channels, in_feature=in_feature)
        self.relu_before_p7 = relu_before_p7

    def forward(self, c5):
        p6 = self.p6(c5)
        p7 = self.p7(F.relu(p6) if self.relu_before_p7 else p6)
        return [p6, p7]
