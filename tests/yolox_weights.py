"""The random weights and images the YOLOX-IP parity and conversion tests share: their
network's weights perturbed (tests/test_yolox_parity.py, tests/test_yolox_convert.py)."""

import torch

import up_reference as ref

K, A = 7, 2  # classes (their num_classes K + 1), anchors per location
DET_SIZES = [(224, 320), (200, 300)]  # (H, W): a multiple of 32 (P3 has 2240 anchors > 1000), not one


def det_image(hw):
    """(3, H, W) BGR 0-255 noise."""
    return torch.randint(0, 256, (3, *hw), generator=torch.Generator().manual_seed(5)).float()


def padded(image):
    """(1, 3, H', W'): 0-padded at the bottom-right to a multiple of 32 (their left_top)."""
    h, w = image.shape[1:]
    return torch.nn.functional.pad(image, (0, -w % 32, 0, -h % 32))[None]


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Random weights standing in for trained ones (their network, before mapping): conv
    weights ~ N(0, 1 / fan_in) (predictors x 0.1: logits and deltas of a trained head's
    size), every bias ~ 0.1 N(0, 1), BN weights in [0.8, 1.2]; then every BN's statistics
    set, in forward order, from what reaches it on a calibration batch and perturbed (var
    x [0.5, 1.5], mean + 0.1 N(0, 1) x std), on the detection test's images (padded: at
    another size or without the zero padding, deep layers see other statistics). Drawn
    statistics alone blow activations up through M's 100-odd layers (every score 1.0:
    ties, no parity to see)."""
    g = torch.Generator().manual_seed(seed)

    def calibrate(bn, inputs):
        x = inputs[0]
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3))
        bn.running_mean.copy_(mean + 0.1 * torch.randn(mean.shape, generator=g) * var.sqrt())
        bn.running_var.copy_(var * (0.5 + torch.rand(var.shape, generator=g)))

    with torch.no_grad():
        for name, t in model.named_parameters():
            if name.endswith(".bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif t.dim() == 1:
                t.copy_(0.8 + 0.4 * torch.rand(t.shape, generator=g))
            else:
                scale = 0.1 if name.startswith("roi_head.") and "_preds." in name else 1.0
                t.copy_(torch.randn(t.shape, generator=g) * scale * t[0].numel() ** -0.5)
        hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules()
                 if isinstance(m, torch.nn.BatchNorm2d)]
        model.eval()
        ref.forward_yolox(model, torch.cat([padded(det_image(hw)) for hw in DET_SIZES]))
        for hook in hooks:
            hook.remove()


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()
