"""Equalized Quality Focal Loss (efl.quality_loss) and the quality-score detector
(efl.modeling.quality): QFL at s = 0 against an independent formula, the statistics, input
errors, parity with the authors' EqualizedQualityFocalLoss over 20 steps, the twin configs
and a short training whose EQFL state moves."""

import importlib
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import LazyConfig, instantiate
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

from efl import EqualizedFocalLoss, EqualizedQualityFocalLoss, QualityFocalLoss
from efl.losses import efl_gamma, efl_pos_neg
from helpers import ROOT, shrink_to_tiny

K = 7


def qfl_reference(logits, labels, quality, beta):
    """Quality Focal Loss as Generalized Focal Loss writes it (sum over entries): BCE to 0
    times sigmoid^beta for every entry, replaced on each positive's class entry by BCE to
    its quality times |quality - sigmoid|^beta. labels (M,) in [0, K], K = background."""
    sigmoid = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    loss = loss * sigmoid.pow(beta)
    pos = torch.nonzero(labels < logits.shape[1]).squeeze(1)
    cls = labels[pos]
    factor = quality[pos] - sigmoid[pos, cls]
    loss[pos, cls] = F.binary_cross_entropy_with_logits(
        logits[pos, cls], quality[pos], reduction="none") * factor.abs().pow(beta)
    return loss.sum()


def random_batch(m=200, k=K, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(m, k, generator=g) * 3).to(dtype)
    labels = torch.randint(0, k + 1, (m,), generator=g)  # k: background
    labels[: m // 2] = k  # mostly background
    quality = torch.rand(m, generator=g).to(dtype)
    quality[m // 2 + 1] = 0.0  # a positive whose quality is 0
    targets = torch.zeros(m, k, dtype=dtype)
    rows = torch.nonzero(labels < k).squeeze(1)
    targets[rows, labels[rows]] = 1
    return logits, labels, quality, targets


def test_scale_factor_zero_is_plain_qfl():
    logits, labels, quality, targets = random_batch()
    z = logits.clone().requires_grad_()
    ours = EqualizedQualityFocalLoss(K, gamma_b=2.0, scale_factor=0.0)
    ours.pos_neg.fill_(0.3)  # any state: s = 0 ignores it
    loss = ours(z, targets, 7.0, quality=quality)
    (grad,) = torch.autograd.grad(loss, z)
    z_ref = logits.clone().requires_grad_()
    expected = qfl_reference(z_ref, labels, quality, 2.0) / 7.0
    (grad_ref,) = torch.autograd.grad(expected, z_ref)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-15)


def test_quality_focal_loss_is_eqfl_at_scale_factor_zero():
    """QualityFocalLoss (no state) equals EQFL with s = 0: the loss bitwise, the gradient
    to float rounding; it needs the quality as EQFL does."""
    logits, labels, quality, targets = random_batch(seed=4, dtype=torch.float32)
    z1, z2 = (logits.clone().requires_grad_() for _ in range(2))
    qfl = QualityFocalLoss(K, beta=2.0)
    assert qfl.needs_quality and not list(qfl.state_dict())
    a = qfl(z1, targets.bool(), torch.tensor(5.0), quality=quality)
    b = EqualizedQualityFocalLoss(K, gamma_b=2.0, scale_factor=0.0)(
        z2, targets.bool(), torch.tensor(5.0), quality=quality)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    (g1,), (g2,) = torch.autograd.grad(a, z1), torch.autograd.grad(b, z2)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-12)  # (K,) vs 0-dim exponent
    with pytest.raises(ValueError, match="QualityFocalLoss needs quality="):
        qfl(logits, targets)


def test_factors_and_statistics_follow_the_state():
    """With a state, each class's entries are weighted by w_j |t - p|^gamma_j; the
    statistics are |dL/dz| summed over the one-hot positives (a quality-0 positive
    included) and the other entries."""
    logits, labels, quality, targets = random_batch(seed=1)
    efl = EqualizedQualityFocalLoss(K, gamma_b=2.0, scale_factor=8.0)
    g = torch.linspace(0.05, 0.95, K)
    efl.pos_neg.copy_(g)
    efl.pos_grad.fill_(1.0)
    efl.neg_grad.copy_(1.0 / g)
    z = logits.clone().requires_grad_()
    loss = efl(z, targets, 3.0, quality=quality)
    loss.backward()
    gamma = efl_gamma(g.double(), 2.0, 8.0)
    t = targets * quality[:, None]
    p = logits.sigmoid()
    each = gamma / 2.0 * (t - p).abs().pow(gamma) * F.binary_cross_entropy_with_logits(
        logits, t, reduction="none")
    torch.testing.assert_close(loss, each.sum() / 3.0)
    a = z.grad.abs().float()
    torch.testing.assert_close(efl.pos_grad, 1.0 + (a * targets.float()).sum(0))
    torch.testing.assert_close(efl.neg_grad, 1.0 / g + (a * (1 - targets.float())).sum(0))
    torch.testing.assert_close(efl.pos_neg, efl_pos_neg(efl.pos_grad, efl.neg_grad))
    assert efl.pos_grad[labels[quality == 0][0]] > 1.0  # the quality-0 positive counts


def test_shares_efl_state_layout_and_background_quality_is_unused():
    eqfl, efl = EqualizedQualityFocalLoss(K), EqualizedFocalLoss(K)
    assert eqfl.state_dict().keys() == efl.state_dict().keys()
    logits, labels, quality, targets = random_batch(seed=2)
    with torch.no_grad():
        a = eqfl(logits, targets, quality=quality)
        quality[labels == K] = float("nan")  # background rows: not read
        torch.testing.assert_close(eqfl(logits, targets, quality=quality), a)


@pytest.mark.parametrize("case, match", [
    ("missing", "EqualizedQualityFocalLoss needs quality="),
    ("shape", "quality must be a tensor of shape"),
    ("range", "quality must be in"),
    ("targets", "one-hot"),
])
def test_bad_input_is_named(case, match):
    logits, labels, quality, targets = random_batch(seed=3)
    if case == "missing":
        quality = None
    elif case == "shape":
        quality = quality[:-1]
    elif case == "range":
        quality[labels < K] = 1.5
    else:
        targets[0, 0] = 0.5
    with pytest.raises(ValueError, match=match):
        EqualizedQualityFocalLoss(K)(logits, targets, quality=quality)


# ----- parity with the authors' EqualizedQualityFocalLoss ---------------------------------
@pytest.fixture(scope="module")
def authors_eqfl(tmp_path_factory):
    """Their class from the vendored archive: their package tree pre-registered as empty
    modules (up_reference), their compiled ops (unused by this loss) as empty names."""
    import up_reference as ref

    root = ref.unpack(str(tmp_path_factory.mktemp("up")))
    ref.import_up(root)
    extensions = sys.modules["up.extensions"]
    for name in ("SigmoidFocalLossFunction", "SoftmaxFocalLossFunction",
                 "CrossSigmoidFocalLossFunction"):
        if not hasattr(extensions, name):
            setattr(extensions, name, None)
    module = importlib.import_module("up.tasks.det.plugins.efl.models.losses.eqfl")
    return module.EqualizedQualityFocalLoss


def parity_run(authors_cls, steps=20, m=600, k=K, seed=0):
    """Max abs / relative differences over `steps` steps of loss, logits' gradient and
    state between theirs and ours on the same random logits, labels (with ignored
    anchors), qualities and normaliser."""
    theirs = authors_cls(num_classes=k + 1, fpn_levels=1)  # their K counts background
    ours = EqualizedQualityFocalLoss(k, gamma_b=2.0, scale_factor=8.0)
    g = torch.Generator().manual_seed(seed)
    worst = {}

    def note(name, a, b):
        a, b = a.detach().double(), b.detach().double()
        abs_diff = (a - b).abs().max().item()
        rel = ((a - b).abs() / b.abs().clamp(min=1e-30)).max().item()  # entrywise
        scaled = abs_diff / b.abs().max().clamp(min=1e-30).item()  # vs the largest entry
        old = worst.get(name, (0.0, 0.0, 0.0))
        worst[name] = (max(old[0], abs_diff), max(old[1], rel), max(old[2], scaled))

    for _ in range(steps):
        logits = torch.randn(m, k, generator=g) * 4
        labels = torch.randint(1, k + 1, (m,), generator=g)  # theirs: 0 bg, 1..k classes
        labels[torch.rand(m, generator=g) < 0.7] = 0
        labels[torch.rand(m, generator=g) < 0.1] = -1  # ignored
        quality = torch.rand(m, generator=g)
        normalizer = float(max(1, int((labels > 0).sum())))

        z1 = logits.clone().requires_grad_()
        loss1 = theirs(z1, labels, normalizer_override=normalizer, scores=quality)
        (grad1,) = torch.autograd.grad(loss1.sum(), z1)
        theirs.collect_grad(grad1.t().reshape(1, k, m, 1))  # their hook's (N, C, H, W)

        valid = labels >= 0
        targets = torch.zeros(m, k)
        pos = torch.nonzero(labels > 0).squeeze(1)
        targets[pos, labels[pos] - 1] = 1
        z2 = logits.clone().requires_grad_()
        loss2 = ours(z2[valid], targets[valid], normalizer, quality=quality[valid])
        (grad2,) = torch.autograd.grad(loss2, z2)

        note("loss", loss2, loss1.reshape(()))
        note("grad", grad2, grad1)
        for name in ("pos_grad", "neg_grad", "pos_neg"):
            note(name, getattr(ours, name), getattr(theirs, name))
    return worst


def test_parity_with_the_authors_eqfl_over_20_steps(authors_eqfl):
    worst = parity_run(authors_eqfl)
    print({name: "abs %.2e rel %.2e rel-to-max %.2e" % w for name, w in worst.items()})
    for name, (_, rel, scaled) in worst.items():
        # gradient entries of ~1e-30 (saturated negatives) carry no relative meaning:
        # the gradient is compared to its largest entry
        assert (scaled if name == "grad" else rel) <= 1e-5, (name, rel, scaled)


# ----- the quality-score detector ------------------------------------------------------
def test_quality_twins_differ_only_in_the_loss():
    for qfl, eqfl in (("Synthetic/quality_qfl.py", "Synthetic/quality_eqfl.py"),
                      ("LVISv1/qfl_improved_R_50_FPN_24ep.py",
                       "LVISv1/eqfl_improved_R_50_FPN_24ep.py")):
        a, b = (LazyConfig.load(os.path.join(ROOT, "configs", p)) for p in (qfl, eqfl))
        for key in ("dataloader", "optimizer", "lr_multiplier"):
            assert OmegaConf.to_yaml(a[key]) == OmegaConf.to_yaml(b[key]), key
        assert a.train.pop("output_dir") != b.train.pop("output_dir")
        assert a.train == b.train
        model_a, model_b = dict(a.model), dict(b.model)
        assert model_b.pop("cls_loss")._target_ is EqualizedQualityFocalLoss
        assert model_a.pop("cls_loss")._target_ is QualityFocalLoss
        assert model_a.pop("_target_") is model_b.pop("_target_")
        assert OmegaConf.to_yaml(OmegaConf.create(model_a)) == OmegaConf.to_yaml(
            OmegaConf.create(model_b))
        # the rest of the improved recipe: everything but the class and the head's class
        improved = LazyConfig.load(os.path.join(
            ROOT, "configs", qfl.replace("quality_qfl", "improved_focal").replace(
                "qfl_improved", "focal_improved")))
        for key in ("dataloader", "optimizer", "lr_multiplier", "train"):
            improved[key].pop("output_dir", None)
            a[key].pop("output_dir", None)
            assert OmegaConf.to_yaml(improved[key]) == OmegaConf.to_yaml(a[key]), key
        assert a.model.head._target_.__name__ == "QualityHead"
        assert a.model._target_.__name__ == "QualityATSSRetinaNet"


def test_quality_detector_has_no_iou_branch_and_scores_by_class_probability():
    cfg = LazyConfig.load(os.path.join(ROOT, "configs/Synthetic/quality_eqfl.py"))
    cfg.model.num_classes = K
    cfg.model.cls_loss.class_groups = None
    model = instantiate(cfg.model).eval()
    assert not any("iou" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        for p in (model.head.cls_score.bias, model.head.cls_score.weight):
            p.zero_()
        out = model([{"image": torch.rand(3, 64, 96) * 255}])[0]["instances"]
    torch.testing.assert_close(out.scores, torch.full_like(out.scores, 0.5))


def test_inference_loading_exempts_the_eqfl_state(tmp_path):
    """load_weights (predict / export) needs every weight but not the loss state: the
    QFL twin's checkpoint (no state) loads into the EQFL model, whose state stays g = 1."""
    from efl.errors import CheckpointError
    from efl.export import load_weights

    models = {}
    for name in ("quality_qfl", "quality_eqfl"):
        cfg = LazyConfig.load(os.path.join(ROOT, f"configs/Synthetic/{name}.py"))
        cfg.model.num_classes = K
        if "class_groups" in cfg.model.cls_loss:
            cfg.model.cls_loss.class_groups = None
        torch.manual_seed(0)
        models[name] = instantiate(cfg.model)
    qfl, eqfl = models["quality_qfl"], models["quality_eqfl"]
    with torch.no_grad():
        qfl.head.cls_score.bias.add_(0.5)
    path = str(tmp_path / "qfl.pth")
    torch.save({"model": qfl.state_dict()}, path)
    load_weights(eqfl, path)
    assert torch.equal(eqfl.head.cls_score.bias, qfl.head.cls_score.bias)
    assert torch.equal(eqfl.cls_loss.pos_neg, torch.ones(K))
    # a weight missing is still an error
    state = {k: v for k, v in qfl.state_dict().items() if k != "head.cls_score.bias"}
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="head.cls_score.bias"):
        load_weights(eqfl, path)


def test_yaml_config_builds_the_quality_detector(tmp_path):
    """configs/yaml/eqfl_quality_R_50_FPN.yaml: QualityATSSRetinaNet.from_config builds its
    QualityHead and EQFL; MODEL.EFL.LOSS QFL (or focal) gives the QFL twin."""
    from detectron2.modeling import build_model

    from efl.modeling import QualityATSSRetinaNet, QualityHead
    from helpers import TINY_CLASSES, tiny_yaml_config

    cfg = tiny_yaml_config("eqfl_quality_R_50_FPN", "unused", str(tmp_path))
    cfg.DATASETS.TRAIN = ()
    model = build_model(cfg)
    assert type(model) is QualityATSSRetinaNet and type(model.head) is QualityHead
    assert isinstance(model.cls_loss, EqualizedQualityFocalLoss)
    assert model.cls_loss.num_classes == TINY_CLASSES and model.head.iou_pred is None
    for name in ("QFL", "focal"):
        cfg.MODEL.EFL.LOSS = name
        assert type(build_model(cfg).cls_loss) is QualityFocalLoss


@pytest.mark.slow
def test_quality_detector_trains_with_eqfl_and_its_state_moves(tiny_dataset, tmp_path):
    from detectron2.config import LazyCall as L

    from efl.engine import Trainer

    cfg = LazyConfig.load(os.path.join(ROOT, "configs/Synthetic/quality_eqfl.py"))
    shrink_to_tiny(cfg, tiny_dataset, str(tmp_path))
    cfg.train.epochs = None
    cfg.train.max_iter = 6
    cfg.train.checkpointer.period = 6
    cfg.train.seed = 0
    cfg.lr_multiplier = L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[5], num_updates=6)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    efl = trainer.model.cls_loss
    assert isinstance(efl, EqualizedQualityFocalLoss)
    assert efl.pos_grad.sum() > 0 and efl.neg_grad.sum() > 0
    assert (efl.pos_neg < 1).any()
    assert "bbox" in results
    saved = torch.load(os.path.join(str(tmp_path), "model_final.pth"), weights_only=False)
    torch.testing.assert_close(saved["model"]["cls_loss.pos_grad"], efl.pos_grad)


def test_config_check_names_the_bad_eqfl_key():
    from efl.engine.config_checks import check_efl_hyperparameters
    from efl.errors import ConfigError

    cfg = LazyConfig.load(os.path.join(ROOT, "configs/Synthetic/quality_eqfl.py"))
    check_efl_hyperparameters(cfg)
    cfg.model.cls_loss.gamma_b = 0
    with pytest.raises(ConfigError, match=r"model\.cls_loss\.gamma_b=0"):
        check_efl_hyperparameters(cfg)
