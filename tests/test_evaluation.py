"""efl.evaluation: the fast LVIS evaluation against lvis-api, APfixed on hand-made cases
where it differs from the capped protocol for a known reason, the configs' evaluator, and
tools/benchmark_eval.py."""

import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT
from efl.evaluation import BOX_KEYS, FIXED_KEYS, FastLVISEvaluator, evaluate_lvis
from efl.evaluation.lvis_like import lvis_like

BACKENDS = ("fast", "lvis")


def _gt(images, boxes, frequencies, neg=None, not_exhaustive=None):
    """LVIS gt: ``images`` ids, ``boxes`` [(image, class, [x, y, w, h])], class -> r/c/f."""
    return {
        "images": [{"id": i, "width": 640, "height": 480,
                    "neg_category_ids": (neg or {}).get(i, []),
                    "not_exhaustive_category_ids": (not_exhaustive or {}).get(i, [])}
                   for i in images],
        "annotations": [{"id": j + 1, "image_id": i, "category_id": c, "bbox": list(b),
                         "area": float(b[2] * b[3])} for j, (i, c, b) in enumerate(boxes)],
        "categories": [{"id": c, "name": f"c{c}", "frequency": f} for c, f in frequencies.items()],
    }


def _det(image, cls, box, score):
    return {"image_id": image, "category_id": cls, "bbox": list(box), "score": score}


def test_agrees_with_lvis_api():
    """Every key within 1e-4 of lvis-api, capped and fixed: ties in scores, more than 300
    detections per image, ignored ground truth, zero-area boxes, negative and
    not-exhaustive classes, all three groups and area ranges."""
    gt, results = lvis_like(num_images=40, num_classes=25, dets_per_image=330, seed=3,
                            score_decimals=2, ignore_fraction=0.05)
    results[0]["bbox"][2] = 0.0
    assert {c["frequency"] for c in gt["categories"]} == {"r", "c", "f"}
    for kwargs in ({}, {"fixed_per_class": 150}):
        fast = evaluate_lvis(gt, results, backend="fast", **kwargs)
        ref = evaluate_lvis(gt, results, backend="lvis", **kwargs)
        assert fast.keys() == ref.keys()
        assert all(0 < ref[k] < 100 for k in ref), ref
        diff = {k: abs(fast[k] - ref[k]) for k in ref}
        assert max(diff.values()) < 1e-4, diff
    # the protocols differ on this data: the cap and the class budget bind
    assert ref != evaluate_lvis(gt, results, backend="lvis")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixed_keeps_detections_the_per_image_cap_drops(backend):
    """One image: 300 confident detections of a frequent class (all false positives but
    one) push the only detection of the rare class past the per-image cap of 300, so APr
    is 0 capped and 100 with APfixed (no per-image cap, 10,000 per class)."""
    rng = np.random.default_rng(0)
    gt = _gt([7], [(7, 1, [10, 10, 50, 50]), (7, 2, [300, 200, 80, 60])], {1: "r", 2: "f"})
    results = [_det(7, 2, [300, 200, 80, 60], 0.99)]
    results += [_det(7, 2, [float(x), float(y), 20, 20], float(s)) for x, y, s in zip(
        rng.uniform(0, 200, 299), rng.uniform(300, 400, 299), rng.uniform(0.3, 0.9, 299))]
    results.append(_det(7, 1, [11, 10, 50, 50], 0.05))
    capped = evaluate_lvis(gt, results, backend=backend)
    fixed = evaluate_lvis(gt, results, backend=backend, fixed_per_class=10000)
    assert set(fixed) == set(FIXED_KEYS.values())
    assert capped["APr"] == 0.0 and fixed["APr_fixed"] == pytest.approx(100.0)
    assert capped["APf"] == fixed["APf_fixed"] == pytest.approx(100.0)
    assert evaluate_lvis(gt, results, backend=backend, max_dets_per_image=None)["APr"] == pytest.approx(100.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fixed_budget_per_class_over_the_dataset(backend):
    """Three images with one box of class 1 each, found with scores 0.9, 0.8, 0.7: with a
    budget of 2 per class the third is dropped (recall 2/3: precision 1 at 67 of the 101
    recall points); the per-image cap keeps all three (AP 100)."""
    gt = _gt([1, 2, 3], [(i, 1, [20, 20, 40, 40]) for i in (1, 2, 3)], {1: "c"})
    results = [_det(i, 1, [20, 20, 40, 40], s) for i, s in ((1, 0.9), (2, 0.8), (3, 0.7))]
    assert evaluate_lvis(gt, results, backend=backend)["APc"] == pytest.approx(100.0)
    fixed = evaluate_lvis(gt, results, backend=backend, fixed_per_class=2)
    assert fixed["APc_fixed"] == pytest.approx(100.0 * 67 / 101)
    assert fixed["APr_fixed"] == -100.0  # no rare class: undefined, as lvis-api


@pytest.mark.parametrize("backend", BACKENDS)
def test_federated_false_positives(backend):
    """A confident false positive of class 1 on image 2 counts where class 1 is annotated
    or in the image's neg_category_ids, is ignored where it is neither, and is ignored where
    class 1 is in not_exhaustive_category_ids."""
    boxes = [(1, 1, [20, 20, 40, 40]), (2, 1, [100, 100, 40, 40])]
    results = [_det(1, 1, [20, 20, 40, 40], 0.5), _det(2, 1, [300, 300, 40, 40], 0.9),
               _det(2, 1, [100, 100, 40, 40], 0.4)]
    ap = evaluate_lvis(_gt([1, 2], boxes, {1: "f"}), results, backend=backend)["AP"]
    assert ap == pytest.approx(100.0 * 2 / 3)  # FP, TP, TP: precision 2/3 at every recall
    ignored = evaluate_lvis(_gt([1, 2], boxes, {1: "f"}, not_exhaustive={2: [1]}), results, backend=backend)
    assert ignored["AP"] == pytest.approx(100.0)
    # on an image without class 1: counted only if class 1 is negative there
    gt = _gt([1, 2], boxes[:1], {1: "f"})
    assert evaluate_lvis(gt, results, backend=backend)["AP"] == pytest.approx(100.0)
    gt = _gt([1, 2], boxes[:1], {1: "f"}, neg={2: [1]})
    assert evaluate_lvis(gt, results, backend=backend)["AP"] == pytest.approx(50.0)  # FP, TP, FP


def test_evaluator_on_a_dataset(tiny_dataset, tmp_path):
    """FastLVISEvaluator (the configs' evaluator): Detectron2's input (0-based classes), the
    same numbers with both backends, APfixed keys when asked, lvis_instances_results.json."""
    from detectron2.data import DatasetCatalog

    rng = np.random.default_rng(0)
    predictions = []
    for record in DatasetCatalog.get(f"{tiny_dataset}_val"):
        instances = [{"image_id": record["image_id"], "category_id": a["category_id"],
                      "bbox": [float(v + rng.normal(0, 2)) for v in a["bbox"]],
                      "score": float(rng.uniform())} for a in record["annotations"]]
        instances += [{"image_id": record["image_id"], "category_id": int(rng.integers(12)),
                       "bbox": [float(v) for v in rng.uniform(5, 60, 4)], "score": float(rng.uniform())}
                      for _ in range(20)]
        predictions.append({"image_id": record["image_id"], "instances": instances})
    results = {}
    for backend in BACKENDS:
        ev = FastLVISEvaluator(f"{tiny_dataset}_val", output_dir=str(tmp_path), distributed=False,
                               max_dets_per_image=300, backend=backend, fixed_per_class=10000)
        ev.reset()
        ev._predictions = [dict(p, instances=[dict(i) for i in p["instances"]]) for p in predictions]
        results[backend] = ev.evaluate()["bbox"]
    assert set(results["fast"]) == set(BOX_KEYS) | set(FIXED_KEYS.values())
    assert 0 < results["fast"]["AP"] < 100
    for k, v in results["lvis"].items():
        assert abs(results["fast"][k] - v) < 1e-4, k
    assert os.path.isfile(tmp_path / "lvis_instances_results.json")
    with pytest.raises(ValueError, match="backend"):
        FastLVISEvaluator(f"{tiny_dataset}_val", backend="coco")


@pytest.mark.slow
def test_benchmark_tool_small():
    """tools/benchmark_eval.py runs both backends and prints their ratios and agreement."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "tools/benchmark_eval.py", "--images", "15",
                          "--classes", "40"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith("ratios fast / lvis-api: time ")
    diff = float(lines[-2].split()[2])
    assert diff < 1e-4


def test_paths_and_arguments(tmp_path):
    """gt and results as file paths give the numbers of the in-memory call; a bad backend
    or an image outside the ground truth is refused."""
    import json

    gt, results = lvis_like(num_images=6, num_classes=8, dets_per_image=40, seed=5)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    assert evaluate_lvis(str(tmp_path / "gt.json"), str(tmp_path / "res.json")) == evaluate_lvis(gt, results)
    with pytest.raises(ValueError, match="backend"):
        evaluate_lvis(gt, results, backend="coco")
    with pytest.raises(ValueError, match="image_id 123456"):
        evaluate_lvis(gt, results + [_det(123456, 1, [0, 0, 5, 5], 0.5)])
