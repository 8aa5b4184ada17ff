"""YOLOX's PAFPN neck (a top-down then bottom-up path of CSP layers on C3-C5), as the EFL
authors build it for YOLOX-IP (United-Perception 52aaeb9,
``up/tasks/det/plugins/yolox/models/neck/pafpn.py``, ``YoloxPAFPN``, nearest upsampling)."""

from typing import Dict

import torch
import torch.nn.functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from .blocks import CSPLayer, ConvBNAct, Norm

__all__ = ["YOLOXPAFPN"]


class YOLOXPAFPN(Backbone):
    """The PAFPN on a bottom-up backbone with three outputs C3, C4, C5 (channels c3, c4, c5,
    strides s, 2s, 4s; YOLOX: CSPDarknet's dark3-dark5, 8/16/32). CSP depth
    ``round(3 x depth)``.

    Top-down: r5 = 1x1(C5) to c4; P4' = CSP([up(r5), C4]) to c4; r4 = 1x1(P4') to c3;
    P3 = CSP([up(r4), C3]) to c3. Bottom-up: P4 = CSP([3x3 s2(P3), r4]) to c4;
    P5 = CSP([3x3 s2(P4), r5]) to c5; every CSP layer with shortcuts, as theirs.

    Outputs ``out_features`` (default "p3", "p4", "p5"): (N, c_l, H / stride, W / stride),
    the input channels and strides of the level. Batches are padded to a multiple of
    ``size_divisibility`` (YOLOX-IP: 32).
    """

    def __init__(self, bottom_up: Backbone, in_features=("dark3", "dark4", "dark5"),
                 depth: float = 0.33, out_features=("p3", "p4", "p5"), norm: Norm = "BN",
                 size_divisibility: int = 32):
        super().__init__()
        if len(in_features) != 3 or len(out_features) != 3:
            raise ValueError(f"YOLOXPAFPN takes 3 input and 3 output levels; got in_features="
                             f"{list(in_features)}, out_features={list(out_features)}")
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(f"the bottom-up backbone has no {missing} (it gives {list(shapes)})")
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        c3, c4, c5 = (shapes[f].channels for f in in_features)
        n = round(3 * depth)
        self.reduce5 = ConvBNAct(c5, c4, 1, norm=norm)
        self.fuse4 = CSPLayer(2 * c4, c4, n, norm=norm)
        self.reduce4 = ConvBNAct(c4, c3, 1, norm=norm)
        self.out3 = CSPLayer(2 * c3, c3, n, norm=norm)
        self.down3 = ConvBNAct(c3, c3, 3, 2, norm=norm)
        self.out4 = CSPLayer(2 * c3, c4, n, norm=norm)
        self.down4 = ConvBNAct(c4, c4, 3, 2, norm=norm)
        self.out5 = CSPLayer(2 * c4, c5, n, norm=norm)
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(out_features, (c3, c4, c5)))
        self._out_feature_strides = {o: shapes[i].stride for o, i in zip(out_features, in_features)}
        self._size_divisibility = size_divisibility

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x) -> Dict[str, torch.Tensor]:
        """x: (N, 3, H, W) -> {"p3": (N, c3, H/8, W/8), "p4": ..., "p5": ...}."""
        feats = self.bottom_up(x)
        c3, c4, c5 = (feats[f] for f in self.in_features)
        r5 = self.reduce5(c5)
        p4_top = self.fuse4(torch.cat([F.interpolate(r5, size=c4.shape[-2:], mode="nearest"), c4], 1))
        r4 = self.reduce4(p4_top)
        p3 = self.out3(torch.cat([F.interpolate(r4, size=c3.shape[-2:], mode="nearest"), c3], 1))
        p4 = self.out4(torch.cat([self.down3(p3), r4], 1))
        p5 = self.out5(torch.cat([self.down4(p4), r5], 1))
        return dict(zip(self._out_features, (p3, p4, p5)))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {f: ShapeSpec(channels=self._out_feature_channels[f],
                             stride=self._out_feature_strides[f]) for f in self._out_features}
