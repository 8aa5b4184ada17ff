"""The family variant of the embedded data (SyntheticLongTailConfig.families): LVIS's
structure of a frequent parent and rare/common relatives that share its shape and colour
and differ in a small mark; it keys the cache, draws the marks, and is deterministic."""

import json
from pathlib import Path

import numpy as np
import pytest

from efl.data import synthetic as syn
from efl.data.synthetic import SyntheticLongTailConfig, generate_synthetic_lvis, is_complete
from efl.data.synthetic.draw import MARKS, render_image
from efl.data.synthetic.tail import plan_splits

SMALL = dict(num_classes=30, num_train_images=60, num_val_images=20, image_size=96,
             min_objects=1, max_objects=3, min_object_size=12, max_object_size=28,
             rare_max_images=3, common_max_images=10)
PLAIN = SyntheticLongTailConfig(**SMALL)
FAMILIES = SyntheticLongTailConfig(**SMALL, families=4, family_size=4)


def _files(root):
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def family_data(tmp_path_factory):
    return generate_synthetic_lvis(tmp_path_factory.mktemp("fam") / "ds", FAMILIES, progress=False)


def test_the_option_keys_the_cache_and_leaves_the_plain_key_as_before(family_data, tmp_path):
    plain = PLAIN.cache_key()
    assert "families" not in plain and "family_size" not in plain  # old caches stay valid
    assert FAMILIES.cache_key() == {**plain, "families": 4, "family_size": 4}
    assert is_complete(family_data["root"], FAMILIES) and not is_complete(family_data["root"], PLAIN)
    other = SyntheticLongTailConfig(**SMALL, families=4, family_size=3)
    assert not is_complete(family_data["root"], other)
    with open(family_data["manifest"]) as f:
        assert json.load(f)["config"]["families"] == 4
    for bad in (dict(families=-1), dict(families=4, family_size=1),
                dict(families=4, family_size=2 + len(MARKS)), dict(families=8, family_size=4)):
        with pytest.raises(ValueError):
            SyntheticLongTailConfig(**SMALL, **bad)


def test_families_share_shape_and_colour_and_parents_are_the_most_frequent(family_data):
    with open(family_data["train_json"]) as f:
        cats = json.load(f)["categories"]
    families = {}
    for c in cats:
        if c["family"] is not None:
            families.setdefault(c["family"], []).append(c)
    assert len(families) == 4 and all(len(m) == 4 for m in families.values())
    identities = set()
    for members in families.values():
        assert len({(c["shape"], c["color"], c["pattern"]) for c in members}) == 1
        assert sorted(c["mark"] for c in members) == sorted(("none",) + MARKS[:3])
        identities.add((members[0]["shape"], members[0]["color"]))
    singles = [c for c in cats if c["family"] is None]
    assert len(singles) == 30 - 16 and all(c["mark"] == "none" for c in singles)
    assert not identities & {(c["shape"], c["color"]) for c in singles if c["pattern"] == "solid"}
    parents = [c["image_count"] for c in cats if c["family"] is not None and c["mark"] == "none"]
    others = [c["image_count"] for c in cats if not (c["family"] is not None and c["mark"] == "none")]
    assert min(parents) >= max(others)  # the parents take the most frequent ranks
    assert any(c["frequency"] == "r" for c in cats if c["mark"] != "none")


def test_a_relative_is_drawn_as_its_parent_plus_the_mark():
    plan = plan_splits(FAMILIES)
    family = [i for i, v in enumerate(plan.visuals) if v["family"] == 0]
    drawn = []
    for c in family:  # the same image (rng) with the parent, then with each relative
        img, _, objects = render_image(np.random.default_rng(7), [c], plan.visuals, FAMILIES)
        drawn.append((img.astype(np.int32), objects[0][1]))
    parent, box = drawn[0]
    x, y, w, h = box
    inside = np.zeros(parent.shape[:2], dtype=bool)
    inside[y:y + h, x:x + w] = True
    for img, other_box in drawn[1:]:
        assert other_box == box  # the mark does not move or resize the object
        diff = np.abs(img - parent).max(-1) > 40
        assert diff.sum() >= 4  # the mark is visible ...
        assert not diff[~inside].any()  # ... and only inside the object
    marks = [d[0] for d in drawn[1:]]
    assert all(np.abs(a - b).max() > 40 for i, a in enumerate(marks) for b in marks[i + 1:])


def test_family_data_is_deterministic_by_seed(family_data, tmp_path):
    again = generate_synthetic_lvis(tmp_path / "again", FAMILIES, progress=False)
    assert _files(again["root"]) == _files(family_data["root"])
    other = plan_splits(SyntheticLongTailConfig(**{**FAMILIES.__dict__, "seed": 1}))
    assert [v["name"] for v in other.visuals] != [v["name"] for v in plan_splits(FAMILIES).visuals]
    assert syn.TRAIN_JSON in _files(again["root"])
