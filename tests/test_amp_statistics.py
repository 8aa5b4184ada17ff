"""The EFL / EQFL state (and that of focal loss / QFL with record_statistics) under a
float16 GradScaler equals the unscaled statistics whatever the scale does (growth,
backoff) and without the steps the scaler skips: through the loss API (use_grad_scaler)
and through the Trainer's AMP path (Detectron2's AMPTrainer)."""

import copy
import os

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.engine import AMPTrainer
from detectron2.utils.events import EventStorage
from fvcore.common.param_scheduler import MultiStepParamScheduler

from efl import EqualizedFocalLoss, EqualizedQualityFocalLoss, QualityFocalLoss, SigmoidFocalLoss
from helpers import ROOT, shrink_to_tiny

K, STEPS, SKIPPED = 5, 8, 4
KEYS = ("pos_grad", "neg_grad", "pos_neg")


class Toy(torch.nn.Module):
    """Linear logits and an unused-by-the-loss parameter whose gradient can be made inf
    (an overflow elsewhere in the network, which the scaler sees and the logits do not)."""

    def __init__(self, loss):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(6, K)
        self.other = torch.nn.Parameter(torch.ones(3))
        self.loss = loss

    def forward(self, x, labels, quality):
        logits = self.linear(x)
        targets = torch.nn.functional.one_hot(labels, K + 1)[:, :K].float()
        extra = (self.other ** 2).sum() * 1e-3
        # one call for every loss: the others ignore quality (the common signature)
        return self.loss(logits, targets, normalizer=4.0, quality=quality) + extra


def batches():
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        labels = torch.randint(0, K + 1, (64,), generator=g)
        yield torch.randn(64, 6, generator=g), labels, torch.rand(64, generator=g)


def run(loss, scaler=None, wire=True):
    """STEPS SGD steps; with a scaler, step SKIPPED overflows (inf in `other`'s gradient)
    and the scaler skips it; without one, that step is left out. Returns the state."""
    model = Toy(loss)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    if scaler is not None and wire:
        loss.use_grad_scaler(scaler)
    scales = []
    for step, (x, labels, quality) in enumerate(batches()):
        if scaler is None and step == SKIPPED:
            continue
        opt.zero_grad()
        total = model(x, labels, quality)
        if scaler is None:
            total.backward()
            opt.step()
            continue
        scaler.scale(total).backward()
        if step == SKIPPED:
            model.other.grad.fill_(float("inf"))
        scales.append(scaler.get_scale())
        scaler.step(opt)
        scaler.update()
    loss.commit_statistics()
    return {k: getattr(loss, k).clone() for k in KEYS}, scales


def changing_scaler():
    # x2 every 2 good steps, /2 on the overflow: 2^10, 2^10, 2^11, 2^11, 2^12 (skipped), 2^11...
    return torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)


LOSSES = {
    "efl-fused": lambda: EqualizedFocalLoss(K),
    "efl-reference": lambda: EqualizedFocalLoss(K, implementation="reference"),
    "eqfl": lambda: EqualizedQualityFocalLoss(K),
    "focal-statistics": lambda: SigmoidFocalLoss(K, record_statistics=True),
    "qfl-statistics": lambda: QualityFocalLoss(K, record_statistics=True),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_state_is_unscaled_under_a_changing_scale_and_skipped_steps(name):
    expected, _ = run(LOSSES[name]())
    unit, _ = run(LOSSES[name](), torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=10**6))
    got, scales = run(LOSSES[name](), changing_scaler())
    assert len(set(scales)) >= 3 and min(scales[SKIPPED + 1:]) < max(scales)  # grew, backed off
    for k in KEYS:
        torch.testing.assert_close(unit[k], expected[k], rtol=1e-6, atol=0)
        torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=0)
    # Without use_grad_scaler the state is the scaled sums (and the skipped step): wrong.
    before_fix, _ = run(LOSSES[name](), changing_scaler(), wire=False)
    assert not torch.allclose(before_fix["pos_grad"], expected["pos_grad"], rtol=1e-2)


def test_skipped_steps_are_counted_and_pending_survives_until_the_verdict():
    loss = EqualizedFocalLoss(K)
    _, _ = run(loss, changing_scaler())
    assert loss.num_skipped_steps == 1 and loss.num_nonfinite_steps == 0 and not loss._pending


# ----- through the Trainer's AMP path ----------------------------------------------------
def _amp_trainer(cfg, scaler_factory, monkeypatch):
    from efl.engine import Trainer

    class ScaledTrainer(Trainer):
        @classmethod
        def build_grad_scaler(cls, cfg):
            return scaler_factory()

    # Detectron2's AMPTrainer asserts CUDA; on CPU its cuda autocast does nothing, so this
    # runs its step order (scale, backward, step, update) in float32 with a CPU scaler.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return ScaledTrainer(cfg)


@pytest.mark.slow
def test_trainer_amp_path_keeps_the_state_unscaled(tiny_dataset, tmp_path, monkeypatch):
    """Trainer with train.amp.enabled (AMPTrainer, a CPU GradScaler whose scale grows x2
    every 2 steps and halves on an overflow at iteration 3) against the float32 Trainer
    without iteration 3: same batches, same weights, same EFL state."""
    from detectron2.config import LazyConfig

    from efl import compat
    from efl.engine import Trainer

    cfg = LazyConfig.load(os.path.join(ROOT, "configs/Synthetic/retinanet_efl.py"))
    shrink_to_tiny(cfg, tiny_dataset, str(tmp_path / "a"))
    cfg.train.max_iter = 6
    cfg.lr_multiplier = L(MultiStepParamScheduler)(values=[1.0], milestones=[], num_updates=6)
    skipped = 3
    states, batches, initial = {}, None, None
    for mode in ("fp32", "amp"):
        run_cfg = copy.deepcopy(cfg)
        run_cfg.train.output_dir = str(tmp_path / mode)
        run_cfg.train.amp.enabled = mode == "amp"
        with monkeypatch.context() as patch:
            if mode == "amp":
                trainer = _amp_trainer(run_cfg, lambda: torch.amp.GradScaler(
                    "cpu", init_scale=2.0 ** 12, growth_interval=2), patch)
                assert isinstance(trainer._trainer, AMPTrainer)
                first = next(p for p in trainer.model.parameters() if p.requires_grad)
                first.register_hook(lambda g: g * float("inf") if trainer.iter == skipped else g)
                trainer.model.load_state_dict(initial)
            else:
                trainer = Trainer(run_cfg)
                initial = copy.deepcopy(trainer.model.state_dict())
                loader = iter(trainer.data_loader)
                batches = [next(loader) for _ in range(trainer.max_iter)]
            trainer._trainer.data_loader = [copy.deepcopy(b) for b in batches]
            compat.restart_data_iterator(trainer._trainer)
            _steps(trainer, skip=skipped if mode == "fp32" else None)
        states[mode] = {k: getattr(trainer.model.cls_loss, k).clone() for k in KEYS}
        if mode == "amp":
            scaler = trainer._trainer.grad_scaler
            assert scaler.get_scale() == 2.0 ** 13  # 2^12, x2 after iter 1, /2 at 3, x2 after 5
            assert trainer.model.cls_loss.num_skipped_steps == 1
    for k in KEYS:
        torch.testing.assert_close(states["amp"][k], states["fp32"][k], rtol=1e-5, atol=0)


def _steps(trainer, skip=None):
    """Trainer.run_step (and the GradScalerCommit hook) over max_iter iterations without the
    other hooks; `skip`: that iteration's
    batch only goes forward, without gradient (what the scaler leaves of an overflow
    step: RetinaNet's forward still moves its loss-normaliser average)."""
    from efl.engine import GradScalerCommit

    commit = [h for h in trainer._hooks if isinstance(h, GradScalerCommit)]
    assert len(commit) == 1
    with EventStorage(0) as storage:
        trainer.storage = storage
        for it in range(trainer.max_iter):
            trainer.iter = it
            if it == skip:
                with torch.no_grad():
                    trainer.model(next(trainer._trainer._data_loader_iter))
                continue
            trainer.run_step()
            commit[0].after_step()  # the hook's part of a step: the scaler's verdict is known
            storage.iter = it + 1
