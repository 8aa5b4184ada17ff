"""EQL and EQLv2 for dense detectors (efl.equalization_losses): parity with their authors'
``EQL`` / ``EQLv2`` (tztztztztz/eqlv2 907fad9, imported at test time from the vendored
archive) over 20 steps, with mutation checks showing the comparison can fail; the focal
variant against autograd and an independent focal loss; the shared state machinery; bad
input (constructor, config check, dataset metadata)."""

import os
import sys
import tarfile
import types
from types import SimpleNamespace

import pytest
import torch
from detectron2.config import LazyCall as L
from fvcore.nn import sigmoid_focal_loss

from efl import EqualizationLoss, EqualizationLossV2, EqualizedFocalLoss, compat
from efl.data.image_frequency import class_image_frequency
from efl.equalization_losses import (base_loss_terms, eql_weight, eqlv2_negative_weight,
                                     eqlv2_weight)
from efl.losses import GradientStatisticsLoss
from helpers import ROOT

# ../shared/vendor beside the checkout; EFL_VENDOR names another folder (e.g. a worktree's)
VENDOR = os.environ.get("EFL_VENDOR", os.path.join(ROOT, "..", "shared", "vendor"))
ARCHIVE = os.path.join(VENDOR, "eqlv2-907fad9.tar.gz")
FOLDER = "eqlv2-907fad9"
THEIR_FILES = ("mmdet/models/losses/eqlv2.py", "mmdet/models/losses/eql.py",
               "mmdet/utils/lvis_v1_0_categories.py")
K = 7
TOLERANCE = 1e-5  # float32 rounding, relative to the largest entry of each quantity
PARITY = {}  # quantity -> worst (abs, relative to max) over the parity runs, printed


# ----- their code, imported without MMDetection -------------------------------------------
def _load(name, path, package):
    module = types.ModuleType(name)
    module.__file__, module.__package__ = path, package
    sys.modules[name] = module
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    """Their EQLv2 and EQL classes: ``mmdet`` packages pre-registered as empty modules, a
    registry that returns its argument, a logging logger, and an identity all-reduce (one
    process). sys.modules is restored afterwards."""
    if not os.path.isfile(ARCHIVE):
        pytest.skip(f"the EQL/EQLv2 authors' code is not vendored at {ARCHIVE}: parity needs it")
    folder = tmp_path_factory.mktemp("eqlv2")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(folder, members=[tar.getmember(f"{FOLDER}/{f}") for f in THEIR_FILES],
                       filter="data")
    root = os.path.join(folder, FOLDER)
    saved = {n: m for n, m in sys.modules.items() if n == "mmdet" or n.startswith("mmdet.")}
    import logging

    for name in ("mmdet", "mmdet.models", "mmdet.models.losses", "mmdet.utils"):
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(root, *name.split("."))]
        sys.modules[name] = package
    sys.modules["mmdet.utils"].get_root_logger = lambda: logging.getLogger("eqlv2-reference")
    builder = types.ModuleType("mmdet.models.builder")
    builder.LOSSES = SimpleNamespace(register_module=lambda: (lambda cls: cls))
    sys.modules["mmdet.models.builder"] = builder
    losses = os.path.join(root, "mmdet", "models", "losses")
    try:
        eqlv2 = _load("mmdet.models.losses.eqlv2", os.path.join(losses, "eqlv2.py"), "mmdet.models.losses")
        eql = _load("mmdet.models.losses.eql", os.path.join(losses, "eql.py"), "mmdet.models.losses")
        eqlv2.dist = SimpleNamespace(all_reduce=lambda tensor: tensor)  # one process
        yield SimpleNamespace(EQLv2=eqlv2.EQLv2, EQL=eql.EQL)
    finally:
        for name in [n for n in sys.modules if n == "mmdet" or n.startswith("mmdet.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def _note(worst, name, ours, theirs):
    ours, theirs = ours.detach().double(), theirs.detach().double()
    diff = (ours - theirs).abs().max().item()
    scaled = diff / max(theirs.abs().max().item(), 1e-30)
    old = worst.get(name, (0.0, 0.0))
    worst[name] = (max(old[0], diff), max(old[1], scaled))


def _random_step(g, m, k):
    """Logits (m, k + 1: their last column is background), labels in [0, k] (k:
    background, ~60%), our one-hot targets (m, k)."""
    logits = torch.randn(m, k + 1, generator=g) * 4
    labels = torch.randint(0, k, (m,), generator=g)
    labels[torch.rand(m, generator=g) < 0.6] = k
    targets = torch.zeros(m, k)
    fg = torch.nonzero(labels < k).squeeze(1)
    targets[fg, labels[fg]] = 1
    return logits, labels, targets


# ----- EQLv2 parity -------------------------------------------------------------------------
def eqlv2_parity(authors, steps=20, m=400, k=K, seed=0, **ours_kwargs):
    """Worst differences over ``steps`` steps between theirs and ours (BCE) on the
    foreground columns: weights, loss terms, loss, and the state after each step."""
    theirs = authors.EQLv2(num_classes=k)  # k + 1 logit columns
    ours = EqualizationLossV2(k, base_loss="bce", **ours_kwargs)
    g = torch.Generator().manual_seed(seed)
    worst = {}
    for _ in range(steps):
        logits, labels, targets = _random_step(g, m, k)
        # their per-entry weights and terms, with their own get_weight, before the update
        theirs.n_i, theirs.n_c = logits.shape
        pos_w, neg_w = theirs.get_weight(logits)
        their_target = torch.zeros(m, k + 1)
        their_target[torch.arange(m), labels] = 1
        their_w = pos_w * their_target + neg_w * (1 - their_target)
        their_terms = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, their_target, reduction="none") * their_w
        their_loss = theirs(logits, labels)  # updates their state
        torch.testing.assert_close(their_loss, their_terms.sum() / m)  # the decomposition

        z = logits[:, :k]
        our_w = eqlv2_weight(ours.pos_neg, targets, ours.map_gamma, ours.mu, ours.alpha)
        our_terms = base_loss_terms(z, targets, "bce")[0] * our_w
        loss = ours(z.clone().requires_grad_(), targets, normalizer=float(m))
        _note(worst, "weight", our_w, their_w[:, :k])
        _note(worst, "loss term", our_terms, their_terms[:, :k])
        _note(worst, "loss (fg columns)", loss, their_terms[:, :k].sum() / m)
        for name in ("pos_grad", "neg_grad", "pos_neg"):
            _note(worst, name, getattr(ours, name), getattr(theirs, name))
    return worst


def test_eqlv2_equals_theirs_over_20_steps(authors):
    worst = eqlv2_parity(authors)
    PARITY.update({f"EQLv2 {n}": w for n, w in worst.items()})
    print({n: "abs %.2e rel-to-max %.2e" % w for n, w in worst.items()})
    for name, (_, scaled) in worst.items():
        assert scaled <= TOLERANCE, (name, worst[name])


@pytest.mark.parametrize("mutation", ["mu", "alpha", "statistic"])
def test_eqlv2_parity_fails_when_a_weight_or_the_statistic_changes(authors, monkeypatch, mutation):
    """The comparison above can fail: a 1% change of mu or alpha is seen in the weights,
    and statistics of the normalised loss's gradient (EFL's way) in the state."""
    kwargs = {"mu": 0.808} if mutation == "mu" else {"alpha": 4.04} if mutation == "alpha" else {}
    if mutation == "statistic":
        def normalised(self, positives, negatives, scaled=True):  # divided by M = 400
            GradientStatisticsLoss.accumulate_statistics(self, positives / 400, negatives / 400)

        monkeypatch.setattr(EqualizationLossV2, "accumulate_statistics", normalised)
    worst = eqlv2_parity(authors, steps=5, **kwargs)
    changed = ("pos_grad", "neg_grad") if mutation == "statistic" else ("weight", "loss term")
    for name in changed:
        assert worst[name][1] > 100 * TOLERANCE, worst


# ----- EQL parity ---------------------------------------------------------------------------
def eql_parity(authors, steps=20, m=200, lambda_=0.0011):
    """Worst differences between their EQL (LVIS v1, 1203 classes) and ours (BCE), ours
    reading the frequencies from Detectron2's LVIS v1 metadata."""
    theirs = authors.EQL(lambda_=0.0011, version="v1")
    k = len(theirs.freq_info)
    ours = EqualizationLoss(k, class_image_frequency("lvis_v1_train"), lambda_=lambda_,
                            base_loss="bce")
    worst = {}
    _note(worst, "image frequency", ours.image_frequency, theirs.freq_info)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        logits, labels, targets = _random_step(g, m, k)
        logits = logits[:, :k]  # their EQL has no background column
        their_loss = theirs(logits, labels)
        their_w = 1 - theirs.exclude_func() * theirs.threshold_func() * (1 - targets)
        their_terms = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, targets, reduction="none") * their_w
        torch.testing.assert_close(their_loss, their_terms.sum() / m)
        our_w = eql_weight(targets, ours.rare)
        _note(worst, "weight", our_w, their_w)
        _note(worst, "loss term", base_loss_terms(logits, targets, "bce")[0] * our_w, their_terms)
        _note(worst, "loss", ours(logits, targets, normalizer=float(m)), their_loss)
    return worst


needs_lvis_v1_counts = pytest.mark.skipif(
    compat.LEGACY_D2, reason="Detectron2 v0.6 has no LVIS v1 class_image_count (efl.compat item "
    "6): EQL reads lvis_v1_train.json there, which these machines do not have")


@needs_lvis_v1_counts
def test_eql_equals_theirs_on_lvis_v1_over_20_steps(authors):
    worst = eql_parity(authors)
    PARITY.update({f"EQL {n}": w for n, w in worst.items()})
    print({n: "abs %.2e rel-to-max %.2e" % w for n, w in worst.items()})
    for name, (_, scaled) in worst.items():
        assert scaled <= TOLERANCE, (name, worst[name])
    assert worst["weight"][0] == 0  # 0/1 weights: exactly theirs


@needs_lvis_v1_counts
def test_eql_parity_fails_when_lambda_changes(authors):
    worst = eql_parity(authors, steps=2, lambda_=0.0013)
    assert worst["weight"][0] == 1.0


# ----- the focal variant and the dense adaptation --------------------------------------
def _batch(seed=0, m=300, k=K, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits, labels, targets = _random_step(g, m, k)
    return logits[:, :k].to(dtype), targets.to(dtype)


@pytest.mark.parametrize("base_loss", ["focal", "bce"])
def test_eqlv2_statistics_are_the_weighted_gradient(base_loss):
    """Per class, the state's increments are |d(sum of weighted terms)/dz| summed over
    positive / negative entries (autograd, normaliser 1), and the loss is the weighted
    base loss (focal: fvcore's sigmoid_focal_loss, an independent formula)."""
    logits, targets = _batch()
    loss_fn = EqualizationLossV2(K, base_loss=base_loss)
    loss_fn.pos_grad.fill_(1.0)
    loss_fn.neg_grad.copy_(torch.linspace(1.0, 40.0, K))  # g from 1 down to 0.025
    loss_fn.pos_neg.copy_(loss_fn.pos_grad / (loss_fn.neg_grad + 1e-10))
    before = {n: getattr(loss_fn, n).clone() for n in ("pos_grad", "neg_grad", "pos_neg")}
    weight = eqlv2_weight(before["pos_neg"].double(), targets, 12.0, 0.8, 4.0)
    z = logits.clone().requires_grad_()
    loss = loss_fn(z, targets, normalizer=1.0)
    (grad,) = torch.autograd.grad(loss, z)
    if base_loss == "focal":
        expected = (sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0) * weight).sum()
    else:
        expected = (torch.nn.functional.binary_cross_entropy_with_logits(
            logits, targets, reduction="none") * weight).sum()
    torch.testing.assert_close(loss, expected.double(), rtol=1e-5, atol=1e-8)  # fvcore: float32
    a = grad.abs().float()
    torch.testing.assert_close(loss_fn.pos_grad, before["pos_grad"] + (a * targets.float()).sum(0))
    torch.testing.assert_close(loss_fn.neg_grad, before["neg_grad"] + (a * (1 - targets.float())).sum(0))
    torch.testing.assert_close(loss_fn.pos_neg, loss_fn.pos_grad / (loss_fn.neg_grad + 1e-10))
    # a class with g < mu: its negatives down-weighted, its positives up-weighted
    f = eqlv2_negative_weight(before["pos_neg"], 12.0, 0.8)
    assert f[-1] < 0.01 and (1 + 4 * (1 - f[-1])) > 4.9


def test_eqlv2_starts_as_its_base_loss_and_shares_the_state_layout():
    logits, targets = _batch(seed=1)
    loss_fn = EqualizationLossV2(K)
    assert loss_fn.state_dict().keys() == EqualizedFocalLoss(K).state_dict().keys()
    assert torch.equal(loss_fn.pos_neg, torch.full((K,), 100.0))  # theirs: f(100) = 1
    with torch.no_grad():  # no autograd: no statistics either
        loss = loss_fn(logits, targets, normalizer=3.0)
    expected = sigmoid_focal_loss(logits, targets, 0.25, 2.0).sum() / 3.0  # float32 inside
    torch.testing.assert_close(loss, expected.double(), rtol=1e-5, atol=1e-8)
    assert loss_fn.pos_grad.sum() == 0 and loss_fn.pos_neg[0] == 100.0
    # background rows (all-zero targets) add negatives only
    z = logits.clone().requires_grad_()
    background = targets.sum(1) == 0
    loss_fn(z[background], targets[background])
    assert loss_fn.pos_grad.sum() == 0 and (loss_fn.neg_grad > 0).all()
    assert (loss_fn.pos_neg == 0).all()  # no positives yet: f(0) ~ 7e-5 on all negatives


def test_eqlv2_under_a_grad_scaler_drops_skipped_steps_and_is_not_rescaled():
    class Scaler:  # get_scale() as torch.amp.GradScaler: lower after a skipped step
        scale = 1024.0

        def get_scale(self):
            return self.scale

    logits, targets = _batch(seed=2, dtype=torch.float32)
    plain, scaled = EqualizationLossV2(K), EqualizationLossV2(K)
    scaler = Scaler()
    scaled.use_grad_scaler(scaler)
    for step in range(3):
        z = logits.clone().requires_grad_()
        scaled(z, targets)
        if step == 1:
            scaler.scale = 512.0  # the scaler skipped step 1
        else:
            plain(logits.clone().requires_grad_(), targets)
    scaled.commit_statistics()
    assert scaled.num_skipped_steps == 1
    torch.testing.assert_close(scaled.pos_grad, plain.pos_grad)
    torch.testing.assert_close(scaled.neg_grad, plain.neg_grad)


def test_eqlv2_non_finite_logits_are_not_added():
    logits, targets = _batch(seed=3, dtype=torch.float32)
    loss_fn = EqualizationLossV2(K)
    logits[0, 0] = float("nan")
    loss_fn(logits.requires_grad_(), targets)
    assert loss_fn.num_nonfinite_steps == 1 and loss_fn.neg_grad.sum() == 0


@pytest.mark.parametrize("base_loss", ["focal", "bce"])
def test_eql_ignores_rare_negatives_on_foreground_rows_only(base_loss):
    logits, targets = _batch(seed=4)
    frequency = [0.5, 0.0005, 0.2, 0.001, 0.3, 0.0001, 0.9]  # classes 1, 3, 5 rare at 0.0011
    loss_fn = EqualizationLoss(K, frequency, base_loss=base_loss)
    assert loss_fn.rare.tolist() == [False, True, False, True, False, True, False]
    terms = base_loss_terms(logits, targets, base_loss)[0]
    keep = torch.ones_like(terms, dtype=torch.bool)
    foreground = targets.sum(1) > 0
    for j in (1, 3, 5):
        keep[foreground & (targets[:, j] == 0), j] = False
    torch.testing.assert_close(loss_fn(logits, targets, 2.0), terms[keep].sum() / 2.0)
    plain = EqualizationLoss(K, frequency, lambda_=0.0, base_loss=base_loss)  # nothing rare
    torch.testing.assert_close(plain(logits, targets), terms.sum())
    assert loss_fn.state_dict() == {}  # stateless: nothing in checkpoints


def test_class_image_frequency_of_a_generated_dataset(tiny_dataset):
    import json

    from detectron2.data import MetadataCatalog

    with open(MetadataCatalog.get(f"{tiny_dataset}_train").json_file) as f:
        data = json.load(f)
    images = {a["image_id"] for a in data["annotations"]}
    expected = [c["image_count"] / len(images) for c in sorted(data["categories"], key=lambda c: c["id"])]
    assert class_image_frequency(f"{tiny_dataset}_train") == expected
    assert 0 < min(expected) and max(expected) <= 1


# ----- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"base_loss": "softmax"}, r"base_loss must be one of \('focal', 'bce'\)"),
    ({"gamma": -1.0}, "gamma must be >= 0"),
    ({"focal_alpha": 1.5}, r"focal_alpha must be in \[0, 1\]"),
])
def test_eqlv2_bad_option_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EqualizationLossV2(K, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"lambda_": 1.5}, r"lambda_ must be in \[0, 1\].*0\.0011.*lambda_=1\.5"),
    ({"lambda_": -0.1}, r"lambda_ must be in \[0, 1\]"),
    ({"base_loss": "ce"}, "base_loss must be one of"),
    ({"image_frequency": [0.1] * (K - 1)}, r"one value per class \(7\)"),
])
def test_eql_bad_option_is_named(kwargs, match):
    kwargs = {"image_frequency": [0.1] * K, **kwargs}
    with pytest.raises(ValueError, match=match):
        EqualizationLoss(K, **kwargs)


@pytest.mark.parametrize("cls, key, value, match", [
    (EqualizationLoss, "lambda_", 2.0, r"Config key model\.loss\.lambda_=2\.0 is out of range.*"
                                       r"e\.g\. model\.loss\.lambda_=0\.0011 \(the default\)"),
    (EqualizationLoss, "base_loss", "softmax", r"Config key model\.loss\.base_loss='softmax'"),
    (EqualizationLossV2, "focal_gamma", -2.0, r"Config key model\.loss\.focal_gamma=-2\.0"),
    (EqualizationLossV2, "base_loss", "sigmoid", r"model\.loss\.base_loss='sigmoid'.*'focal'"),
])
def test_config_check_names_the_key(cls, key, value, match):
    from omegaconf import OmegaConf

    from efl.engine import check_efl_hyperparameters
    from efl.errors import ConfigError

    node = L(cls)(num_classes=K, **{key: value})
    if cls is EqualizationLoss:
        node.image_frequency = L(class_image_frequency)(dataset_name="not-read-by-the-check")
    cfg = OmegaConf.create({"model": {"loss": node}})
    with pytest.raises(ConfigError, match=match):
        check_efl_hyperparameters(cfg)


def test_missing_image_count_is_a_dataset_error(tiny_dataset, tmp_path):
    import json

    from detectron2.data import DatasetCatalog, MetadataCatalog

    from efl.data.lvis import register_lvis_format
    from efl.errors import DatasetFormatError

    meta = MetadataCatalog.get(f"{tiny_dataset}_train")
    with open(meta.json_file) as f:
        data = json.load(f)
    for c in data["categories"][2:]:
        del c["image_count"]
    path = tmp_path / "no_image_count.json"
    path.write_text(json.dumps(data))
    name = f"{tmp_path.name}_no_image_count"
    register_lvis_format(name, str(path), meta.image_root)
    try:
        with pytest.raises(DatasetFormatError, match=r"no_image_count\.json: categories \[3, 4, 5, "
                                                     r"6, 7\]\.\.\. have no 'image_count'"):
            class_image_frequency(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# ----- bad input through train_net.py: one paragraph, exit status 2 --------------------
TINY_EQL = os.path.join(ROOT, "tests", "configs", "tiny_eql.py")


def _train_net_fails(tmp_path, dataset, loss, *opts, expect):
    from runs import train_net

    out = tmp_path / "out"
    code, output = train_net(str(out), *opts, dataset_root=dataset, config=TINY_EQL,
                             env={"EFL_TINY_LOSS": loss})
    assert code == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert len([line for line in output.splitlines() if expect in line]) == 1, output[-3000:]
    assert not (out / "model_final.pth").exists() and not (out / "last_checkpoint").exists()


@pytest.mark.slow
@pytest.mark.parametrize("loss, option, expect", [
    ("eqlv2", "base_loss=softmax", "base_loss='softmax' is out of range: base_loss must be one of"),
    ("eql", "lambda_=1.5", "lambda_=1.5 is out of range: lambda_ must be in [0, 1]"),
    ("eql", "lamda_=0.1", "Did you mean"),
])
def test_train_net_bad_option_exit_2(tiny_dataset, tmp_path, loss, option, expect):
    from detectron2.config import LazyConfig
    from runs import dataset_root

    model = LazyConfig.load(os.path.join(ROOT, "configs/Synthetic/retinanet_efl.py")).model
    key = "cls_loss" if "cls_loss" in model else "efl"  # the detectors' loss attribute
    _train_net_fails(tmp_path, dataset_root(tiny_dataset), loss, f"model.{key}.{option}",
                     expect=expect)


@pytest.mark.slow
def test_train_net_missing_image_count_exit_2(tiny_dataset, tmp_path):
    """A training set whose categories carry no image_count: EQL cannot know its rare
    classes; the run stops when the model is built."""
    import json
    import shutil

    from runs import dataset_root

    source = dataset_root(tiny_dataset)
    copy = tmp_path / "data"
    shutil.copytree(source, copy)
    train_json = next(copy.glob("*train*.json"))
    data = json.loads(train_json.read_text())
    for c in data["categories"]:
        del c["image_count"]
    train_json.write_text(json.dumps(data))
    _train_net_fails(tmp_path, str(copy), "eql", "train.max_iter=2",
                     expect="have no 'image_count'")
