"""tools/scale_probe.py: the procedural stream's design (efl.data.procedural) against
LVIS's statistics and the issue's bounds, and the probe end to end at toy sizes on CPU."""

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from helpers import ROOT

from efl.bench.measure import anchor_layout
from efl.bench.scale_probe import GPU_PROBE, design_numbers
from efl.data.procedural import ProceduralStream, StreamDesign


def test_default_design_has_lvis_shares_rare_bound_and_anchor_count():
    d = GPU_PROBE.design
    groups = Counter(d.groups())
    assert d.num_classes >= 300 and groups == {"r": 84, "c": 115, "f": 101}  # 337/461/405 of 1203
    freq, g = d.frequencies(), np.array(d.groups())
    assert freq[g == "r"].max() <= 1e-3 < freq[g == "f"].min()
    assert freq[g == "r"].max() <= freq[g == "c"].min() and freq[g == "c"].max() <= freq[g == "f"].min()
    assert anchor_layout((d.image_size, d.image_size), 9)[0] >= 2e4
    numbers = design_numbers(GPU_PROBE)
    assert numbers["expected_negatives_per_rare_positive"][1] >= 1e8  # LVIS's order: 4e8


def test_stream_is_reproducible_and_frequencies_follow_the_design():
    d = StreamDesign()
    a, b = ProceduralStream(d, seed=3), ProceduralStream(d, seed=3)
    assert a.train_layout(17) == b.train_layout(17) != ProceduralStream(d, seed=4).train_layout(17)
    n = 4000
    seen = np.zeros(d.num_classes)
    for i in range(n):
        for c in {c for c, _ in a.train_layout(i)}:
            seen[c] += 1
    g = np.array(d.groups())
    expected = d.frequencies()
    frequent = g == "f"
    assert abs(seen[frequent].sum() / (expected[frequent].sum() * n) - 1) < 0.05  # few dropped
    assert seen[g == "r"].sum() <= 3 * expected[g == "r"].sum() * n + 5


def test_validation_set_is_class_balanced_and_exhaustive():
    d = StreamDesign(num_classes=40, val_images_per_class=3)
    stream = ProceduralStream(d, seed=0)
    lvis = stream.lvis_json()
    per_class = Counter(a["category_id"] for a in lvis["annotations"])
    assert set(per_class) == set(range(1, 41)) and max(per_class.values()) <= 3
    assert sum(per_class.values()) >= 0.95 * 120  # placements that did not fit are rare
    for image in lvis["images"]:
        present = {a["category_id"] for a in lvis["annotations"] if a["image_id"] == image["id"]}
        assert present.isdisjoint(image["neg_category_ids"])
        assert present | set(image["neg_category_ids"]) == set(range(1, 41))
    assert Counter(c["frequency"] for c in lvis["categories"]) == Counter(d.groups())
    image = stream.draw(stream.val_layouts()[0], 0)
    assert image.shape == (3, d.image_size, d.image_size) and 0 <= image.min() < image.max() <= 255


@pytest.mark.slow
def test_tiny_probe_trains_and_evaluates_both_models_on_cpu(tmp_path):
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, "tools/scale_probe.py", "--device", "cpu", "--tiny",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    focal, efl = result["models"]["focal"], result["models"]["efl"]
    for row in (focal, efl):
        assert {"AP", "APr", "APc", "APf"} <= set(row["metrics"])
    assert focal["rare_training_images"] == efl["rare_training_images"]  # the same images
    assert "mean_g" not in focal and set(efl["mean_g"]) == {"r", "c", "f"}
    assert all(0 <= v < 1 for v in efl["mean_g"].values())  # the state moved from g = 1
    assert efl["rare_negatives_per_positive"] > 0
    assert "APr" in proc.stdout and "negatives per rare positive" in proc.stdout
