"""YOLOX's CSPDarknet backbone, as the EFL authors build it for YOLOX-IP (United-Perception
52aaeb9, ``up/tasks/det/plugins/yolox/models/backbone/cspdarknet.py``, ``CSPDarknet`` with
``focus_type: v5_focus`` and SPP; their ``yolox_s`` / ``yolox_m``)."""

from typing import Dict

import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from .blocks import CSPLayer, ConvBNAct, Focus, Norm, SPP

__all__ = ["CSPDarknet", "YOLOX_SIZES"]

#: (depth multiplier, width multiplier) of the named sizes (their ``yolox_s`` / ``yolox_m``).
YOLOX_SIZES = {"s": (0.33, 0.50), "m": (0.67, 0.75)}

_STAGES = ("stem", "dark2", "dark3", "dark4", "dark5")


class CSPDarknet(Backbone):
    """Focus stem (3x3) and four stages, each a 3x3 stride-2 :class:`ConvBNAct` and a
    :class:`CSPLayer` (dark5: the conv, :class:`SPP`, then a CSP layer without shortcuts).

    Channels ``c = int(64 x width)``: stem c, dark2..dark5 2c, 4c, 8c, 16c; CSP depths
    ``d = max(round(3 x depth), 1)``: d, 3d, 3d, d. S = depth 0.33 / width 0.5 (c 32, d 1),
    M = 0.67 / 0.75 (c 48, d 2). SiLU and BatchNorm (eps 1e-3, momentum 0.03) throughout.

    Outputs the stages in ``out_features`` ("stem", "dark2", ..., "dark5"; strides 2 to
    32): (N, channels, H / stride, W / stride) each. H and W must be even (the Focus stem).
    """

    def __init__(self, depth: float, width: float, out_features=("dark3", "dark4", "dark5"),
                 in_channels: int = 3, norm: Norm = "BN"):
        super().__init__()
        c = int(64 * width)
        d = max(round(3 * depth), 1)
        self.stem = Focus(in_channels, c, kernel_size=3, norm=norm)

        def stage(c_in, c_out, n):
            return nn.Sequential(ConvBNAct(c_in, c_out, 3, 2, norm=norm),
                                 CSPLayer(c_out, c_out, n, norm=norm))

        self.dark2 = stage(c, 2 * c, d)
        self.dark3 = stage(2 * c, 4 * c, 3 * d)
        self.dark4 = stage(4 * c, 8 * c, 3 * d)
        self.dark5 = nn.Sequential(
            ConvBNAct(8 * c, 16 * c, 3, 2, norm=norm),
            SPP(16 * c, 16 * c, norm=norm),
            CSPLayer(16 * c, 16 * c, d, shortcut=False, norm=norm),
        )
        unknown = [f for f in out_features if f not in _STAGES]
        if unknown or not out_features:
            raise ValueError(f"out_features must name stages of {_STAGES}; got {list(out_features)}")
        self._out_features = [s for s in _STAGES if s in out_features]  # by stride
        channels = dict(zip(_STAGES, (c, 2 * c, 4 * c, 8 * c, 16 * c)))
        strides = dict(zip(_STAGES, (2, 4, 8, 16, 32)))
        self._out_feature_channels = {f: channels[f] for f in self._out_features}
        self._out_feature_strides = {f: strides[f] for f in self._out_features}

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x) -> Dict[str, torch.Tensor]:
        """x: (N, C, H, W) -> {name: (N, channels, H / stride, W / stride)}."""
        out = {}
        for name in _STAGES:
            x = getattr(self, name)(x)
            if name in self._out_features:
                out[name] = x
            if name == self._out_features[-1]:
                break
        return out

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {f: ShapeSpec(channels=self._out_feature_channels[f],
                             stride=self._out_feature_strides[f]) for f in self._out_features}
