"""The YOLOX-IP recipe's optimisation side (configs/common/yolox_recipe.py): the weight-decay
exceptions (their ``yolov5_except``), the LR curve (their ``yolox_base`` warm-up + cosine +
flat), the model EMA (their ``exp`` EMA, with torch's AveragedModel) step by step, in
checkpoints (periodic and preemption), across an exact resume and in evaluation. The
authors' own code (vendored) is run where it imports; those comparisons skip without it."""

import importlib
import math
import os
import signal
import sys
import types

import pytest
import torch
from torch import nn

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import HookBase
from detectron2.solver import LRMultiplier

import up_reference as ref
from efl.checkpoint import EFLCheckpointer
from efl.engine.ema import EMASettings, build_model_ema, ema_model_state, ema_settings
from efl.errors import ConfigError, InputError
from efl.solver import YOLOXCosineSchedule, yolox_cosine_in_epochs, yolox_param_groups
from helpers import ROOT, TINY_CLASSES
from runs import assert_same

sys.path.insert(0, ROOT)
from configs.common.models.yolox_ip import set_yolox_size  # noqa: E402

CLS = ["head.cls_score.0", "head.cls_score.1", "head.cls_score.2"]


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    """Their optimizer, LR and EMA helpers, imported from the vendored archive."""
    root = ref.unpack(str(tmp_path_factory.mktemp("united_perception")))
    ref.import_up(root)
    for name in ("up.tasks.det.plugins.efl.utils", "up.tasks.det.plugins.yolox",
                 "up.tasks.det.plugins.yolox.utils"):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [os.path.join(root, *name.split("."))]
            sys.modules[name] = module
    get = importlib.import_module
    return types.SimpleNamespace(
        lr=get("up.utils.model.lr_helper"),
        yolox_lr=get("up.tasks.det.plugins.yolox.utils.lr_helper"),
        optim=get("up.tasks.det.plugins.efl.utils.optimizer_helper"),
        ema=get("up.utils.model.ema_helper"),
    )


def yolox_s(num_classes=6):
    cfg = LazyConfig.load(os.path.join(ROOT, "configs/common/models/yolox_ip.py"))
    cfg.model.num_classes = num_classes
    return instantiate(cfg.model)


# ----- weight decay -----------------------------------------------------------------------
def test_weight_decay_spares_batchnorm_weights_and_biases_but_the_classifiers():
    model = yolox_s()
    groups = yolox_param_groups(model, weight_decay=5e-4, decayed_bias_modules=["head.cls_score"])
    assert [g["weight_decay"] for g in groups] == [0.0, 5e-4, 0.0]
    names = {id(p): n for n, p in model.named_parameters()}
    norm, decayed, biases = ({names[id(p)] for p in g["params"]} for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(names)  # each parameter once
    bn = {f"{m}.weight" for m, mod in model.named_modules()
          if isinstance(mod, nn.modules.batchnorm._BatchNorm)}
    assert len(bn) > 50 and norm == bn
    all_biases = {n for n in names.values() if n.endswith(".bias")}
    assert {f"{m}.bias" for m in CLS} <= decayed
    assert biases == all_biases - {f"{m}.bias" for m in CLS}
    assert {n[:-len(".weight")] + ".bias" for n in bn} <= biases  # BN biases undecayed
    assert all(n.endswith(".weight") for n in decayed - {f"{m}.bias" for m in CLS})
    assert "head.iou_pred.0.bias" in biases and "head.bbox_pred.2.bias" in biases


def test_weight_decay_groups_are_their_yolov5_except_groups(up):
    model = yolox_s()
    theirs = up.optim.Yolov5ExceptOptimizer.__new__(up.optim.Yolov5ExceptOptimizer)
    theirs.model = model
    expected = theirs.get_trainable_params({"kwargs": {"weight_decay": 5e-4, "except_keys": CLS}})
    ours = yolox_param_groups(model, weight_decay=5e-4, decayed_bias_modules=["head.cls_score"])
    assert [g["weight_decay"] for g in ours] == [g["weight_decay"] for g in expected]
    for a, b in zip(ours, expected):
        assert {id(p) for p in a["params"]} == {id(p) for p in b["params"]}


def test_unknown_decayed_bias_module_is_an_input_error():
    with pytest.raises(InputError, match="roi_head.cls_preds"):
        yolox_param_groups(yolox_s(), weight_decay=5e-4, decayed_bias_modules=["roi_head.cls_preds"])


# ----- LR schedule -----------------------------------------------------------------------
def their_formula(i, warmup, flat, total, m=0.05):
    """The curve as written in their yolox lr_helper (base: the warm-up's LR of its last
    iteration, which their ChainIterLR hands the cosine)."""
    if i < warmup:
        return (i / warmup) ** 2
    base = ((warmup - 1) / warmup) ** 2
    if i >= flat:
        return base * m
    return base * (m + 0.5 * (1 - m) * (1 + math.cos(math.pi * (i - warmup) / (flat - warmup))))


def lrs(scheduler, total, lr=1.0):
    """The LR Detectron2's LRMultiplier gives iterations 0..total-1."""
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    sched = LRMultiplier(opt, scheduler, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_lr_curve_at_its_key_points():
    starts = list(range(0, 210, 10))  # 20 epochs of 10 iterations
    curve = lrs(yolox_cosine_in_epochs(epoch_starts=starts, warmup_epochs=5, flat_epochs=3), 200)
    w, f = 50, 170
    assert curve[0] == 0.0
    assert curve[25] == pytest.approx(0.25)
    assert curve[w - 1] == pytest.approx((49 / 50) ** 2)
    base = (49 / 50) ** 2
    assert curve[w] == pytest.approx(base)  # the cosine's top
    assert curve[(w + f) // 2] == pytest.approx(base * (0.05 + 0.95 / 2))
    assert curve[f - 1] == pytest.approx(their_formula(f - 1, w, f, 200))
    assert curve[f] == curve[199] == pytest.approx(base * 0.05)
    for i, v in enumerate(curve):
        assert v == pytest.approx(their_formula(i, w, f, 200), abs=1e-12), i


def test_lr_curve_follows_epochs_of_different_lengths():
    starts = [0, 7, 15, 22, 30, 37, 45, 52, 60]  # 8 epochs of 7-8 iterations
    sched = yolox_cosine_in_epochs(epoch_starts=starts, warmup_epochs=2, flat_epochs=2)
    assert (sched.warmup, sched.flat, sched.total) == (15, 45, 60)


def test_lr_curve_is_their_scheduler(up):
    """Their yolox_base scheduler (YoloXCosWarmUpLR + YoloXCosineLR chained by their
    BaseLRScheduler) on 20 epochs of 10 iterations, lr 0.0003125 per image x 128 images."""
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.0003125)
    cfg = {"warmup_epochs": 5, "warmup_type": "yolox_cos", "type": "YoloXCosineLR",
           "kwargs": {"T_max": 20, "min_lr_scale": 0.05, "no_aug_epoch": 3}}
    theirs = up.yolox_lr.YoloXLRScheduler(cfg, opt, 10, 128).build_scheduler()
    expected = []
    for _ in range(200):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        theirs.step()
    ours = lrs(yolox_cosine_in_epochs(epoch_starts=list(range(0, 210, 10)), warmup_epochs=5,
                                      flat_epochs=3), 200, lr=0.0003125 * 128)
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64),
                               torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_lr_schedule_in_epochs_needs_train_epochs_and_sane_figures():
    with pytest.raises(InputError, match="train.epochs"):
        yolox_cosine_in_epochs()
    with pytest.raises(InputError, match="flat_epochs"):
        yolox_cosine_in_epochs(epoch_starts=list(range(0, 50, 10)), flat_epochs=4)
    with pytest.raises(InputError, match="warmup_epochs"):
        yolox_cosine_in_epochs(epoch_starts=list(range(0, 50, 10)), warmup_epochs=4, flat_epochs=1)


# ----- the EMA ---------------------------------------------------------------------------
class Tiny(nn.Module):
    """A conv, a BatchNorm (float statistics, integer counter) and a float state buffer
    standing in for the EFL state."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.register_buffer("pos_grad", torch.zeros(3))

    def forward(self, x):
        return self.bn(self.conv(x))


def perturb(model, step):
    with torch.no_grad():
        for t in list(model.parameters()) + [model.pos_grad]:
            t.add_(torch.randn_like(t))
        model(torch.randn(4, 2, 5, 5))  # training mode: new BN statistics, counter + 1


def test_ema_update_step_by_step_by_hand():
    torch.manual_seed(0)
    model = Tiny().train()
    settings = EMASettings(decay=0.9, tau=2.0)
    ema = build_model_ema(model, settings)
    assert not ema.module.training and not any(p.requires_grad for p in ema.parameters())
    expected = None
    for t in range(5):
        perturb(model, t)
        ema.update_parameters(model)
        now = {k: v.clone() for k, v in model.state_dict().items()}
        d = 0.9 * (1 - math.exp(-t / 2.0))  # t: updates before this one; d_0 = 0
        if expected is None:
            expected = now
        else:
            expected = {k: (v * d + (1 - d) * now[k]) if v.is_floating_point() else now[k]
                        for k, v in expected.items()}
        got = ema.module.state_dict()
        assert got.keys() == expected.keys()
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-7, msg=k)
        assert int(ema.n_averaged) == t + 1
    assert int(got["bn.num_batches_tracked"]) == 5  # integers: the model's


def test_ema_is_their_exp_ema_bitwise(up):
    torch.manual_seed(1)
    model = Tiny().train()
    ours = build_model_ema(model, EMASettings(decay=0.9998, tau=2000.0))
    theirs = up.ema.ExpEMA(model, decay=0.9998)
    for t in range(6):
        perturb(model, t)
        ours.update_parameters(model)
        theirs.step(model, curr_step=t)
    a, b = ours.module.state_dict(), theirs.model.state_dict()
    for k, v in b.items():
        if v.is_floating_point():
            assert torch.equal(a[k], v), k


def test_ema_settings_read_train_ema():
    assert ema_settings({"ema": {"enabled": False}}) is None
    assert ema_settings({}) is None
    assert ema_settings({"ema": {"enabled": True}}) == EMASettings(0.9998, 2000.0)
    with pytest.raises(ConfigError, match="decay"):
        ema_settings({"ema": {"enabled": True, "decay": 1.5}})
    with pytest.raises(ConfigError, match="unknown"):
        ema_settings({"ema": {"enabled": True, "momentum": 0.9}})


def test_recipe_config_figures():
    cfg = LazyConfig.load(os.path.join(ROOT, "configs/common/yolox_recipe.py"))
    assert cfg.optimizer.lr == pytest.approx(0.04) and cfg.optimizer.nesterov
    assert (cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.9, 5e-4)
    assert cfg.train.epochs == 300 and cfg.train.ema == {"enabled": True, "decay": 0.9998, "tau": 2000}
    assert (cfg.lr_multiplier.warmup_epochs, cfg.lr_multiplier.min_lr_scale,
            cfg.lr_multiplier.flat_epochs) == (5, 0.05, 15)
    assert not cfg.train.clip_grad.enabled


# ----- the EMA in training, checkpoints, resume and evaluation ----------------------------
def tiny_yolox(tiny_dataset, out, max_iter=4):
    """configs/Synthetic/yolox_ip_efl.py shrunk as tests/test_yolox.py does (width 0.125,
    12 classes, 160 px, batch 2; the augmentation chain switched off from iteration 3, after
    the preemption below), checkpoints every 2 iterations, an EMA that moves."""
    cfg = LazyConfig.load(os.path.join(ROOT, "configs/Synthetic/yolox_ip_efl.py"))
    set_yolox_size(cfg.model, depth=0.33, width=0.125)
    cfg.model.num_classes = TINY_CLASSES
    cfg.model.cls_loss.class_groups.dataset_name = f"{tiny_dataset}_train"
    cfg.dataloader.train.dataset.names = f"{tiny_dataset}_train"
    cfg.dataloader.test.dataset.names = f"{tiny_dataset}_val"
    cfg.dataloader.train.mapper.input_size = 160  # the recipe's chain, at 160 px
    cfg.dataloader.train.mapper.no_aug_from_iter = 3  # then without mosaic / affine / mixup
    cfg.dataloader.test.mapper.augmentations[0].max_size = 160
    cfg.dataloader.train.total_batch_size = 2
    cfg.dataloader.train.num_workers = cfg.dataloader.test.num_workers = 0
    cfg.train.update(epochs=None, max_iter=max_iter, log_period=1, output_dir=str(out), seed=0)
    cfg.train.checkpointer.period = 2
    cfg.train.ema = dict(enabled=True, decay=0.9, tau=2.0)
    cfg.lr_multiplier = L(YOLOXCosineSchedule)(warmup=1, flat=3, total=max_iter, min_lr_scale=0.05)
    return cfg


def run(cfg, resume=False, hook=None, monkeypatch=None):
    from efl.engine import Trainer, plan_run

    trainer = Trainer(cfg, plan_run(cfg, resume=resume))
    if hook is not None:
        trainer.register_hooks([hook])
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


@pytest.fixture
def no_lvis_eval(monkeypatch):
    """Trainer.test records the model it is given instead of evaluating."""
    from efl.engine import Trainer

    seen = []
    monkeypatch.setattr(Trainer, "test", classmethod(lambda cls, cfg, model, evaluator=None:
                                                     seen.append(model) or {}))
    return seen


@pytest.mark.slow
def test_ema_in_checkpoints_preemption_exact_resume_and_evaluation(tiny_dataset, tmp_path,
                                                                   no_lvis_eval):
    from efl.engine import Preempted

    full = tmp_path / "full"
    trainer = run(tiny_yolox(tiny_dataset, full))
    # evaluation used the EMA
    assert no_lvis_eval == [trainer.ema.module]
    final = torch.load(full / "model_final.pth", weights_only=True)
    ema = ema_model_state(final)
    assert int(final["ema"]["n_averaged"]) == 4
    floats = {k for k, v in final["model"].items() if v.is_floating_point()}
    assert {k for k, v in ema.items() if v.is_floating_point()} == floats
    assert any(k.startswith("cls_loss.") for k in floats)  # the EFL state is averaged too
    differs = [k for k in floats if not torch.equal(ema[k], final["model"][k])]
    assert "cls_loss.pos_grad" in differs and any("running_var" in k for k in differs)
    periodic = torch.load(full / "model_0000001.pth", weights_only=True)
    assert int(periodic["ema"]["n_averaged"]) == 2

    # preempted after iteration 2 (not a periodic checkpoint), then resumed to the end
    class SignalAt(HookBase):
        def after_step(self):
            if self.trainer.iter == 1:  # after this iteration's preemption check
                os.kill(os.getpid(), signal.SIGUSR2)

    stopped = tmp_path / "stopped"
    with pytest.raises(Preempted):
        run(tiny_yolox(tiny_dataset, stopped), hook=SignalAt())
    preempted = torch.load(stopped / "model_0000002.pth", weights_only=True)
    assert int(preempted["ema"]["n_averaged"]) == 3
    resumed = run(tiny_yolox(tiny_dataset, stopped), resume=True)
    assert resumed.start_iter == 3
    again = torch.load(stopped / "model_final.pth", weights_only=True)
    assert_same(again["model"], final["model"], "model")
    assert_same(again["ema"], final["ema"], "ema")


def test_eval_only_and_deployment_use_the_checkpoints_ema(tmp_path):
    from efl.engine.ema import use_checkpoint_ema
    from efl.export import load_weights

    torch.manual_seed(0)
    model = Tiny()
    ema = build_model_ema(model, EMASettings())
    perturb(model, 0)
    ema.update_parameters(model)
    perturb(model, 1)
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": model.state_dict(), "ema": ema.state_dict()}, path)
    on = LazyConfig.load(os.path.join(ROOT, "configs/common/yolox_recipe.py"))
    evaluated = Tiny()
    rest = EFLCheckpointer(evaluated, str(tmp_path)).resume_or_load(path, resume=False)
    assert_same(evaluated.state_dict(), model.state_dict())
    assert use_checkpoint_ema(on.train, evaluated, rest)  # as train_net.py --eval-only
    assert_same(evaluated.state_dict(), ema.module.state_dict())
    deployed = Tiny()  # as build_inference_model (predict, export)
    assert use_checkpoint_ema(on.train, deployed, load_weights(deployed, path))
    assert_same(deployed.state_dict(), ema.module.state_dict())
    on.train.ema.enabled = False  # a run without EMA: the model weights
    plain = Tiny()
    assert not use_checkpoint_ema(on.train, plain, load_weights(plain, path))
    assert_same(plain.state_dict(), model.state_dict())


def test_synthetic_configs_build_the_recipes_optimizer_schedule_and_ema():
    from efl.engine import RunPlan, Trainer

    cfg = LazyConfig.load(os.path.join(ROOT, "configs/Synthetic/yolox_ip_focal.py"))
    assert ema_settings(cfg.train) == EMASettings(0.998, 200.0)
    model = yolox_s(120)
    optimizer = Trainer.build_optimizer(cfg, model)
    assert optimizer.defaults["nesterov"] and optimizer.defaults["lr"] == 0.02
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 5e-4, 0.0]
    plan = RunPlan(None, 2000, list(range(0, 2001, 250)))  # its 8 epochs of 250 iterations
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer, plan)
    curve = scheduler._multiplier
    assert (curve.warmup, curve.flat, curve.total, curve.min_lr_scale) == (250, 1750, 2000, 0.05)


@pytest.mark.slow
def test_batchnorm_statistics_are_averaged_after_the_ema_update_before_saving(
        tiny_dataset, tmp_path, monkeypatch):
    """train.all_reduce_norm (their runtime.async_norm, on in the LVIS recipe): the hook sits
    after the EMA update and before the checkpointer and evaluation, and averages the model
    and the EMA at the evaluation iterations and the last."""
    from detectron2.engine import hooks

    from efl.engine import Trainer, plan_run
    from efl.engine import norm_sync
    from efl.engine.ema import ModelEMAUpdate

    assert LazyConfig.load(os.path.join(ROOT, "configs/common/yolox_recipe.py")).train.all_reduce_norm
    cfg = tiny_yolox(tiny_dataset, tmp_path, max_iter=7)
    cfg.train.update(all_reduce_norm=True, eval_period=3)
    trainer = Trainer(cfg, plan_run(cfg))
    def at(kind):
        return next(i for i, h in enumerate(trainer._hooks) if isinstance(h, kind))

    assert (at(ModelEMAUpdate) < at(norm_sync.AllReduceNorm) < at(hooks.PeriodicCheckpointer)
            < at(hooks.EvalHook))
    seen = []
    monkeypatch.setattr(norm_sync, "all_reduce_norm", lambda m: seen.append((trainer.iter, m)) or 0)
    hook = trainer._hooks[at(norm_sync.AllReduceNorm)]
    for trainer.iter in range(7):
        hook.after_step()
    assert seen == [(i, m) for i in (2, 5, 6) for m in (trainer.model, trainer.ema.module)]
