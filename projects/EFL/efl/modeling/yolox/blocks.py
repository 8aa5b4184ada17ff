"""The building blocks of YOLOX's CSPDarknet and PAFPN (Ge et al., "YOLOX: Exceeding YOLO
Series in 2021"), as the EFL authors build them (United-Perception 52aaeb9,
``up/tasks/det/plugins/yolov5/models/components.py`` and
``up/tasks/det/plugins/yolox/models/backbone/cspdarknet.py``): conv + BatchNorm + SiLU,
the space-to-depth Focus stem, the CSP layer of bottlenecks and the SPP block.

BatchNorm: eps 1e-3, momentum 0.03 (their ``runtime.special_bn_init``, set on every BN of
the YOLOX-IP models)."""

from typing import Union

import torch
from torch import nn

from detectron2.layers import get_norm

__all__ = ["BN_EPS", "BN_MOMENTUM", "yolox_norm", "ConvBNAct", "Focus", "Bottleneck",
           "CSPLayer", "SPP"]

BN_EPS, BN_MOMENTUM = 1e-3, 0.03

Norm = Union[str, type]


def yolox_norm(norm: Norm, channels: int) -> nn.Module:
    """Detectron2's ``get_norm(norm, channels)`` ("BN", "SyncBN", a class...) with YOLOX's
    eps and momentum on a BatchNorm."""
    layer = get_norm(norm, channels)
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        layer.eps, layer.momentum = BN_EPS, BN_MOMENTUM
    return layer


class ConvBNAct(nn.Module):
    """k x k conv (no bias, padding k // 2) -> norm -> SiLU; (N, C_in, H, W) ->
    (N, C_out, H / stride, W / stride)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, norm: Norm = "BN"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              padding=kernel_size // 2, bias=False)
        self.norm = yolox_norm(norm, out_channels)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class Focus(nn.Module):
    """Space-to-depth by 2, then a :class:`ConvBNAct`; (N, C, H, W) -> (N, out, H/2, W/2).

    The 4C channels are ordered (row offset, column offset, channel): the four 2 x 2
    phases top-left, top-right, bottom-left, bottom-right (their ``Space2Depth``; the
    official YOLOX orders them top-left, bottom-left, top-right, bottom-right). H and W must
    be even."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 norm: Norm = "BN"):
        super().__init__()
        self.conv = ConvBNAct(4 * in_channels, out_channels, kernel_size, norm=norm)

    def forward(self, x):
        n, c, h, w = x.shape
        x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 3, 5, 1, 2, 4)
        return self.conv(x.reshape(n, 4 * c, h // 2, w // 2))


class Bottleneck(nn.Module):
    """1x1 ConvBNAct -> 3x3 ConvBNAct (hidden = out channels), plus the input when
    ``shortcut`` and the channel counts agree."""

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool = True,
                 norm: Norm = "BN"):
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 1, norm=norm)
        self.conv2 = ConvBNAct(out_channels, out_channels, 3, norm=norm)
        self.shortcut = shortcut and in_channels == out_channels

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        return y + x if self.shortcut else y


class CSPLayer(nn.Module):
    """The CSP layer (YOLOv5's C3): two 1x1 convs to ``out // 2`` channels, ``depth``
    :class:`Bottleneck` s on the first, concatenated with the second, a 1x1 conv to
    ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, depth: int = 1,
                 shortcut: bool = True, norm: Norm = "BN"):
        super().__init__()
        hidden = out_channels // 2
        self.conv1 = ConvBNAct(in_channels, hidden, 1, norm=norm)
        self.conv2 = ConvBNAct(in_channels, hidden, 1, norm=norm)
        self.conv3 = ConvBNAct(2 * hidden, out_channels, 1, norm=norm)
        self.blocks = nn.Sequential(*[Bottleneck(hidden, hidden, shortcut, norm)
                                      for _ in range(depth)])

    def forward(self, x):
        return self.conv3(torch.cat([self.blocks(self.conv1(x)), self.conv2(x)], dim=1))


class SPP(nn.Module):
    """Spatial pyramid pooling: 1x1 conv to ``in // 2``, concatenated with its stride-1
    max-pools of sizes 5, 9 and 13, a 1x1 conv to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, kernels=(5, 9, 13),
                 norm: Norm = "BN"):
        super().__init__()
        hidden = in_channels // 2
        self.conv1 = ConvBNAct(in_channels, hidden, 1, norm=norm)
        self.conv2 = ConvBNAct(hidden * (len(kernels) + 1), out_channels, 1, norm=norm)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernels)

    def forward(self, x):
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.pools], dim=1))
