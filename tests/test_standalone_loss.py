"""The loss stands alone: ``efl``'s losses with torch only (a process where Detectron2 and
fvcore cannot be imported), and EFL in torchvision's RetinaNet (efl/torchvision.py,
docs/usage.md "EFL in torchvision")."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import ROOT

PACKAGE = os.path.join(ROOT, "projects", "EFL")


def test_losses_import_and_train_without_detectron2():
    code = textwrap.dedent("""
        import sys
        for name in ("detectron2", "fvcore"):
            sys.modules[name] = None  # importing them fails
        try:
            import detectron2  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("detectron2 importable")
        import torch
        import efl
        from efl import EqualizedFocalLoss, EqualizedQualityFocalLoss
        assert not hasattr(efl, "EFLRetinaNet")  # the Detectron2 parts are left out
        g = torch.Generator().manual_seed(0)
        targets = torch.zeros(64, 5, dtype=torch.bool)
        targets[torch.arange(0, 64, 4), torch.arange(16) % 5] = True
        for loss in (EqualizedFocalLoss(5), EqualizedQualityFocalLoss(5)):
            logits = torch.randn(64, 5, generator=g, requires_grad=True)
            quality = torch.rand(64, generator=g)
            value = loss(logits, targets, 16.0, quality=quality)
            value.backward()
            assert torch.isfinite(value) and logits.grad.abs().sum() > 0
            assert (loss.pos_neg < 1).all() and loss.pos_grad.sum() > 0, loss.pos_neg
        assert not [m for m in sys.modules if m.split(".")[0] in ("detectron2", "fvcore")
                    and sys.modules[m] is not None]
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": PACKAGE}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


def test_efl_import_does_not_swallow_other_import_errors():
    """Only a missing Detectron2 leaves its parts out: a broken import elsewhere raises."""
    code = ("import sys; sys.modules['efl.modeling'] = None\n"
            "try:\n    import efl\nexcept ImportError as e:\n    print('raised', e)\n")
    env = {**os.environ, "PYTHONPATH": PACKAGE}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.stdout.startswith("raised"), (run.stdout, run.stderr[-2000:])


def _images(num, size, num_classes, seed):
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(num):
        image = torch.rand(3, size, size, generator=g)
        xy = torch.rand(3, 2, generator=g) * size / 2
        wh = 16 + torch.rand(3, 2, generator=g) * size / 3
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
        for (x1, y1, x2, y2), c in zip(boxes.round().int().tolist(), range(3)):
            image[c, y1:y2, x1:x2] = 1.0  # a filled box, in one channel
        images.append(image)
        targets.append({"boxes": boxes, "labels": torch.randint(1, num_classes, (3,), generator=g)})
    return images, targets


def test_torchvision_retinanet_trains_with_efl(tmp_path):
    from torchvision.models.detection import retinanet_resnet50_fpn

    from efl import EqualizedFocalLoss
    from efl.losses import statistics_losses
    from efl.torchvision import use_cls_loss

    k = 5  # torchvision's num_classes: background column 0 and 4 classes
    torch.manual_seed(0)

    def build():
        return retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=k,
                                      min_size=128, max_size=128)

    stock, model = build(), build()
    model.load_state_dict(stock.state_dict())
    use_cls_loss(model, EqualizedFocalLoss(k))
    assert [n for n, _ in statistics_losses(model)] == ["head.classification_head.cls_loss"]
    images, targets = _images(2, 128, k, seed=1)
    stock.train(), model.train()
    # At the initial state (g = 1) EFL is focal loss: torchvision's loss, to float rounding.
    a, b = stock(images, targets), model(images, targets)
    torch.testing.assert_close(b["classification"], a["classification"], rtol=1e-5, atol=0)
    torch.testing.assert_close(b["bbox_regression"], a["bbox_regression"], rtol=0, atol=0)

    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    efl = model.head.classification_head.cls_loss
    for step in range(2):
        losses = model(*_images(2, 128, k, seed=10 + step))
        assert all(torch.isfinite(v) for v in losses.values()), losses
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    # the state moved: every column saw negatives; the classes saw positives, column 0
    # (background) none, so its g is 0 (the others stay near 1 this early)
    assert (efl.neg_grad > 0).all() and efl.pos_grad[1:].sum() > 0
    assert efl.pos_grad[0] == 0 and efl.pos_neg[0] == 0
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    restored = use_cls_loss(build(), EqualizedFocalLoss(k))
    restored.load_state_dict(torch.load(path, weights_only=True))
    for name in ("pos_grad", "neg_grad", "pos_neg"):
        assert torch.equal(getattr(restored.head.classification_head.cls_loss, name),
                           getattr(efl, name)), name
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and {"boxes", "scores", "labels"} <= detections[0].keys()
    with pytest.raises(ValueError, match="num_classes=4 but the RetinaNet head has 5"):
        use_cls_loss(build(), EqualizedFocalLoss(k - 1))
