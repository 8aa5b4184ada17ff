"""torchvision ResNet files as train.init_checkpoint (efl/convert/resnet.py through
EFLCheckpointer), and the authors' BN with fixed statistics and trained affine."""

import os

import pytest
import torch
import torchvision
from detectron2.modeling.backbone import BasicStem, ResNet

from efl.checkpoint import EFLCheckpointer
from efl.errors import CheckpointError
from efl.modeling import FrozenStatsBatchNorm2d


def torchvision_file(tmp_path, arch: str, seed: int = 0) -> str:
    """torchvision's ``resnetXX()`` with random weights and perturbed BN statistics and
    affine, saved as a bare state dict like torchvision's downloads."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    path = str(tmp_path / f"{arch}.pth")
    torch.save(net.state_dict(), path)
    return path


def d2_resnet(depth: int) -> ResNet:
    norm = FrozenStatsBatchNorm2d
    pytorch_style = {} if depth < 50 else {"stride_in_1x1": False}  # basic blocks: no 1x1
    return ResNet(
        BasicStem(in_channels=3, out_channels=64, norm=norm),
        ResNet.make_default_stages(depth=depth, norm=norm, **pytorch_style),
        out_features=["res2", "res3", "res4", "res5"], freeze_at=2,
    )


@pytest.mark.parametrize("arch, depth", [("resnet18", 18), ("resnet50", 50)])
def test_torchvision_file_initialises_the_detectron2_backbone(tmp_path, arch, depth):
    path = torchvision_file(tmp_path, arch)
    ours = d2_resnet(depth)
    EFLCheckpointer(ours).resume_or_load(path, resume=False)
    theirs = getattr(torchvision.models, arch)()
    theirs.load_state_dict(torch.load(path))
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        out = ours(x)
        y = theirs.maxpool(theirs.relu(theirs.bn1(theirs.conv1(x))))
        for i in range(1, 5):
            y = getattr(theirs, f"layer{i}")(y)
            assert (out[f"res{i + 1}"] - y).abs().max() < 1e-4, i


def test_torchvision_file_loads_into_the_improved_config(tmp_path):
    from detectron2.config import LazyConfig, instantiate

    from helpers import ROOT

    cfg = LazyConfig.load(os.path.join(ROOT, "configs/LVISv1/focal_improved_R_50_FPN_24ep.py"))
    cfg.model.num_classes = 3
    model = instantiate(cfg.model)
    path = torchvision_file(tmp_path, "resnet50")
    EFLCheckpointer(model).resume_or_load(path, resume=False)
    state = torch.load(path)
    got = model.backbone.bottom_up
    assert torch.equal(got.stem.conv1.weight, state["conv1.weight"])
    assert torch.equal(got.res4[5].conv3.norm.running_var, state["layer3.5.bn3.running_var"])
    assert torch.equal(got.res5[0].shortcut.norm.bias, state["layer4.0.downsample.1.bias"])


def test_torchvision_file_of_another_depth_is_one_clear_error(tmp_path):
    path = torchvision_file(tmp_path, "resnet18")
    with pytest.raises(CheckpointError) as e:
        EFLCheckpointer(d2_resnet(50)).resume_or_load(path, resume=False)
    message = str(e.value)
    assert "ResNet-18" in message and "ResNet-50" in message and path in message
    assert "resnet50-19c8e357.pth" in message


def test_authors_checkpoint_as_init_checkpoint_says_how_to_convert(tmp_path):
    path = str(tmp_path / "efl_improved_baseline_r50.pth")
    torch.save({"model": {"module.backbone.layer0.0.weight": torch.zeros(64, 3, 7, 7),
                          "module.roi_head.iou_pred.weight": torch.zeros(2, 256, 3, 3)}}, path)
    with pytest.raises(CheckpointError, match="tools/convert_up_checkpoint.py"):
        EFLCheckpointer(d2_resnet(50)).resume_or_load(path, resume=False)


def test_frozen_stats_bn_keeps_statistics_and_trains_affine():
    net = d2_resnet(18)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    net(torch.randn(2, 3, 64, 64))["res5"].sum().backward()
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # statistics fixed
    assert net.res3[0].conv1.norm.weight.grad is not None  # affine trained in res3-res5
    assert net.res5[1].conv2.norm.bias.grad.abs().sum() > 0
    for frozen in (net.stem.conv1.norm, net.res2[0].conv1.norm):  # stem and res2 frozen
        assert not any(p.requires_grad for p in frozen.parameters())
