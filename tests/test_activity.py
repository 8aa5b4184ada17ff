"""Is EFL doing anything (efl.activity, efl.engine.activity): after the warm-up, a rare
group (or, without groups, least frequent classes) whose mean g is still close to 1 gets
exactly one plain-words note in the training log; a state that moved gets none."""

import logging
import math

import pytest
import torch
from detectron2.engine import TrainerBase

from efl.activity import (FOCAL_LIKE_G, LEAST_FREQUENT_LABEL, RARE_LABEL, WARMUP_FRACTION,
                          focal_like_note, least_frequent_g, watched_classes_g)
from efl.engine.activity import EFLActivityCheck
from efl.losses import EqualizedFocalLoss

HEADLINE = "EFL is acting almost as focal loss here"


class LossOnlyTrainer(TrainerBase):
    """Detectron2's training loop around an EFL whose state is set by hand: every step
    runs the loss forward (it puts its group means into the EventStorage), no backward,
    so the state stays what the test set."""

    def __init__(self, efl):
        super().__init__()
        self.model = torch.nn.ModuleDict({"loss": efl}).train()

    def run_step(self):
        K = self.model["loss"].num_classes
        targets = torch.zeros(6, K)
        targets[0, 0] = 1
        self.model["loss"](torch.zeros(6, K), targets)


def train_with_state(g, groups, max_iter=20, neg=None):
    """(notes logged, hook) after ``max_iter`` steps of a loss whose state is ``g`` (K,)
    (accumulated positive gradient g * neg, negative ``neg``, default 1)."""
    efl = EqualizedFocalLoss(len(g), gamma_b=2.0, scale_factor=8.0, class_groups=groups)
    neg = torch.ones(len(g)) if neg is None else torch.tensor(neg)
    efl.accumulate_statistics(torch.tensor(g) * neg, neg)
    trainer = LossOnlyTrainer(efl)
    hook = EFLActivityCheck()
    trainer.register_hooks([hook])
    notes = []
    handler = logging.Handler()
    handler.emit = lambda record: notes.append(record.getMessage())
    log = logging.getLogger("efl.engine.activity")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        trainer.train(0, max_iter)
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    return notes, hook


def test_rare_classes_near_one_give_exactly_one_note_after_the_warmup():
    notes, hook = train_with_state([0.95, 0.6, 0.3, 0.2], ["r", "c", "f", "f"])
    assert len(notes) == 1 and notes[0] == hook.note
    assert notes[0].startswith(HEADLINE)
    at = math.ceil(WARMUP_FRACTION * 20)
    assert f"after {at} of 20 iterations, the {RARE_LABEL} classes' mean g is 0.950" in notes[0]
    assert "focusing factor is 2.40 instead of focal loss's 2" in notes[0]  # 2 + 8 * 0.05
    assert "too few negatives per rare positive" in notes[0]


def test_a_state_that_moved_gives_no_note():
    notes, hook = train_with_state([0.3, 0.95, 1.0, 1.0], ["r", "c", "f", "f"])
    assert notes == [] and hook.note is None


def test_without_groups_the_least_frequent_classes_decide():
    # 10 classes; the one with the least positive gradient (0.92 * 0.1) stands for the rare
    neg = [0.1] + [1.0] * 9
    notes, _ = train_with_state([0.92] + [0.3] * 9, None, neg=neg)
    assert len(notes) == 1 and LEAST_FREQUENT_LABEL in notes[0] and "0.920" in notes[0]
    notes, _ = train_with_state([0.5] + [1.0] * 9, None, neg=neg)
    assert notes == []


def test_threshold_and_least_frequent_selection():
    assert focal_like_note(FOCAL_LIKE_G, RARE_LABEL, 2.0, 8.0, "at the end").startswith(HEADLINE)
    assert focal_like_note(FOCAL_LIKE_G - 1e-3, RARE_LABEL, 2.0, 8.0, "at the end") is None
    assert focal_like_note(None, RARE_LABEL, 2.0, 8.0, "at the end") is None
    # classes without any positive are left out; 20 seen -> the 2 with least gradient
    pos = [0.0] * 5 + [float(i) for i in range(1, 21)]
    g = [0.0] * 5 + [0.9, 1.0] + [0.1] * 18
    assert least_frequent_g(g, pos) == pytest.approx(0.95)
    assert least_frequent_g([1.0, 1.0], [0.0, 0.0]) is None


def test_the_watched_classes_are_the_rare_group_else_the_least_frequent():
    """One choice for the trainer's note and the report's: the rare group's mean g when it
    is known, else the least frequent classes' from the state, else nothing."""
    pos = [0.0] * 5 + [float(i) for i in range(1, 21)]
    g = [0.0] * 5 + [0.9, 1.0] + [0.1] * 18
    assert watched_classes_g(0.3, g, pos) == (RARE_LABEL, 0.3)
    assert watched_classes_g(None, g, pos) == (LEAST_FREQUENT_LABEL, pytest.approx(0.95))
    assert watched_classes_g(None, g, None) == (LEAST_FREQUENT_LABEL, None)
    assert watched_classes_g(None, [1.0, 1.0], [0.0, 0.0]) == (LEAST_FREQUENT_LABEL, None)
