"""FPN pieces of the EFL authors' improved detector: P6/P7 without a ReLU between, P6 made
from the coarsest lateral, batches padded to a multiple of 64."""

import torch.nn.functional as F
from torch import nn

from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelP6P7 as _D2LastLevelP6P7

__all__ = ["LastLevelP6P7", "LateralTopFPN"]


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


class LateralTopFPN(FPN):
    """Detectron2's :class:`FPN` whose ``top_block`` reads the coarsest level's *lateral*
    (the ``out_channels``-channel 1x1 output, before its 3x3 output conv) instead of a
    bottom-up feature or an FPN output: the EFL authors' P6 = conv(C5 lateral)
    (``up/tasks/det/models/necks/fpn.py`` 171; mmdetection calls it "on_lateral").

    ``size_divisibility``: batches are padded to a multiple of it (the authors: 64;
    Detectron2's FPN: the coarsest input stride, 32). ``top_block.in_feature`` is unused.
    Every conv starts as theirs (``initializer: xavier``): xavier-normal weights, zero bias
    (Detectron2's ``c2_xavier_fill`` is a uniform of another scale).
    """

    def __init__(self, *args, size_divisibility: int = 64, **kwargs):
        super().__init__(*args, **kwargs)
        self._size_divisibility = size_divisibility
        bottom_up = {id(m) for m in self.bottom_up.modules()}
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in bottom_up:
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        """As :meth:`FPN.forward`; P6/P7 from the coarsest lateral.

        Returns:
            dict of ``p*`` features, (N, out_channels, H / stride, W / stride) each.
        """
        bottom_up = self.bottom_up(x)
        lateral = self.lateral_convs[0](bottom_up[self.in_features[-1]])
        top_lateral, prev = lateral, lateral
        results = [self.output_convs[0](prev)]
        for idx in range(1, len(self.lateral_convs)):
            lateral = self.lateral_convs[idx](bottom_up[self.in_features[-idx - 1]])
            prev = lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")
            if self._fuse_type == "avg":
                prev = prev / 2
            results.insert(0, self.output_convs[idx](prev))
        results.extend(self.top_block(top_lateral))
        assert len(self._out_features) == len(results)
        return dict(zip(self._out_features, results))
