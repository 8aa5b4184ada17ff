"""The comparison report (efl.report, tools/compare.py) on fabricated output
folders over the tiny generated dataset: files, numbers, errors, the CLI."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ROOT
from efl.report import (
    METRICS,
    REPORT_FILES,
    BadRunFolder,
    MissingRunFile,
    build_report,
    read_metrics,
)
from efl.report.runs import _iter_json_array

PNGS = [f for f in REPORT_FILES if f.endswith(".png")]


def make_run(folder, val_json, image_root, *, seed, bbox, efl, num_iters=60, rng_seed=0,
             legacy=False):
    """An output folder as the trainer writes it (fabricated numbers).

    bbox: dict of box metrics (percent); efl: None or (gamma_b, scale_factor, alpha);
    legacy: as written before the loss was ``cls_loss`` (run_info "efl", keys "efl.*")."""
    rng = np.random.default_rng(rng_seed)
    os.makedirs(os.path.join(folder, "inference"))
    with open(val_json) as f:
        data = json.load(f)
    K = len(data["categories"])
    info = {
        "meta_architecture": "EFLRetinaNet" if efl else "RetinaNet",
        "num_classes": K,
        **({"efl": None if efl is None else dict(zip(("gamma_b", "scale_factor", "alpha"), efl))}
           if legacy else {"cls_loss": None if efl is None else {
               "name": "EqualizedFocalLoss", **dict(zip(("gamma_b", "scale_factor", "alpha"), efl))}}),
        "train_datasets": ["efl_tiny_train"],
        "test_dataset": "efl_tiny_val",
        "test_json": val_json,
        "image_root": image_root,
        "max_iter": num_iters,
        "seed": seed,
    }
    with open(os.path.join(folder, "run_info.json"), "w") as f:
        json.dump(info, f)
    results = {"AP50": 1.0, "AP75": 1.0, "APs": -100.0, "APm": 2.0, "APl": float("nan"),
               "APr": 0.0, "APc": 0.0, "APf": 0.0, "AP": 0.0, **bbox}
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"iteration": num_iters, "results": {"bbox": results}}, f)
    groups = {"r": 0.2, "c": 0.5, "f": 0.8}
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        for it in range(0, num_iters, 5):
            decay = math.exp(-it / 30)
            rec = {"iteration": it, "total_loss": 2.0 * decay + 0.3 + 0.05 * rng.random(),
                   "loss_cls": 1.2 * decay + 0.1, "loss_box_reg": 0.5, "lr": 0.01}
            if efl:
                frac = 1 - math.exp(-it / 15)
                rec.update({f"efl/pos_neg_{g}": 1 - (1 - v) * frac for g, v in groups.items()})
                rec["efl/pos_neg_all"] = float(np.mean([rec[f"efl/pos_neg_{g}"] for g in groups]))
                rec["efl/gamma_all"] = 2.0
            f.write(json.dumps(rec) + "\n")
        f.write(json.dumps({"iteration": num_iters - 1, "bbox/AP": bbox["AP"]}) + "\n")
    state = {"backbone.weight": torch.zeros(2)}
    if efl:
        freq = [c["frequency"] for c in sorted(data["categories"], key=lambda c: c["id"])]
        g = torch.tensor([groups[x] + 0.1 * rng.random() for x in freq], dtype=torch.float32)
        neg = torch.full((K,), 10.0)
        prefix = "efl." if legacy else "cls_loss."
        state.update({prefix + "pos_grad": g * neg, prefix + "neg_grad": neg, prefix + "pos_neg": g})
    torch.save({"model": state, "iteration": num_iters - 1},
               os.path.join(folder, "model_final.pth"))
    dets = []
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [x + 1, y - 1, w, h], "score": float(rng.random())})
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"] % K + 1,
                     "bbox": [x + 3, y + 2, w * 0.8, h], "score": float(rng.random() * 0.6)})
    with open(os.path.join(folder, "inference", "lvis_instances_results.json"), "w") as f:
        json.dump(dets, f)
    return folder


BASE_AP = [  # AP, AP50, AP75, APr, APc, APf per seed
    (10.0, 20.0, 8.0, 0.0, 5.0, 15.0),
    (12.0, 22.0, 9.0, 1.0, 6.0, 17.0),
    (11.0, 21.0, 10.0, 2.0, 7.0, 16.0),
]
EFL_AP = [
    (13.0, 24.0, 11.0, 4.0, 9.0, 18.0),
    (14.5, 25.0, 12.5, 6.5, 10.0, 18.5),
]


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(f"{tiny_dataset}_val")
    root = tmp_path_factory.mktemp("runs")
    base = [make_run(str(root / f"focal_s{s}"), meta.json_file, meta.image_root, seed=s,
                     bbox=dict(zip(METRICS, ap)), efl=None, rng_seed=s)
            for s, ap in enumerate(BASE_AP)]
    efl = [make_run(str(root / f"efl_s{s}"), meta.json_file, meta.image_root, seed=s,
                    bbox=dict(zip(METRICS, ap)), efl=(2.0, 8.0, 0.25), rng_seed=10 + s,
                    legacy=s == 0)
           for s, ap in enumerate(EFL_AP)]
    return root, base, efl


@pytest.fixture(scope="module")
def report(runs):
    root, base, efl = runs
    out = str(root / "report")
    return out, build_report(base, efl, out, labels=("focal", "EFL"), num_images=3)


def test_every_file_is_written_and_pngs_are_images(report):
    out, rep = report
    assert sorted(os.listdir(out)) == sorted(REPORT_FILES)
    for name in PNGS:
        with Image.open(os.path.join(out, name)) as im:
            im.verify()
        with Image.open(os.path.join(out, name)) as im:
            assert im.format == "PNG" and im.size[0] >= 500 and im.size[1] >= 300
            assert np.asarray(im.convert("L")).std() > 5  # not blank
    assert rep["plots"] == ["ap_by_group.png", "efl_state_vs_instances.png", "loss_curves.png",
                            "detections.png"]
    assert rep["skipped_plots"] == {} and rep["warnings"] == []
    assert len(rep["detection_images"]) == 3
    assert not [f for f in os.listdir(os.path.dirname(out)) if ".tmp-" in f or ".old-" in f]


def test_table_numbers_equal_the_inputs(report):
    out, rep = report
    with open(os.path.join(out, "summary.json")) as f:
        saved = json.load(f)
    for label, table in (("focal", BASE_AP), ("EFL", EFL_AP)):
        model = saved["models"][label]
        arr = np.array(table)
        assert model["n"] == len(table)
        assert [r["seed"] for r in model["runs"]] == list(range(len(table)))
        for j, m in enumerate(METRICS):
            assert [r["bbox"][m] for r in model["runs"]] == list(arr[:, j])
            assert model["mean"][m] == pytest.approx(arr[:, j].mean())
            assert model["std"][m] == pytest.approx(arr[:, j].std(ddof=1))
            assert model["min"][m] == arr[:, j].min() and model["max"][m] == arr[:, j].max()
    for j, m in enumerate(METRICS):
        diff = np.mean(np.array(EFL_AP)[:, j]) - np.mean(np.array(BASE_AP)[:, j])
        assert saved["difference"][m] == pytest.approx(diff)
    # APl is NaN and APs -100 in the input: undefined -> null in strict JSON
    assert saved["models"]["focal"]["runs"][0]["bbox"]["APl"] is None
    assert saved["models"]["focal"]["runs"][0]["bbox"]["APs"] is None

    # The text table: one line per row, fixed width, the same numbers.
    lines = rep["table"].splitlines()
    assert saved["table"] == rep["table"]
    assert len({len(line) for line in lines[1:]}) == 1  # fixed-width rows
    rows = {}
    model = None
    for line in lines[3:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        model = cells[0] or model
        rows[(model, cells[1])] = cells[3:]
    assert rows[("focal", "seed 1")] == [f"{v:.2f}" for v in BASE_AP[1]]
    assert rows[("EFL", "seed 0")] == [f"{v:.2f}" for v in EFL_AP[0]]
    assert rows[("focal", "mean of 3")] == [f"{v:.2f}" for v in np.mean(BASE_AP, 0)]
    assert rows[("focal", "std")] == [f"{v:.2f}" for v in np.std(BASE_AP, 0, ddof=1)]
    assert rows[("EFL", "min")] == [f"{v:.2f}" for v in np.min(EFL_AP, 0)]
    assert rows[("EFL", "max")] == [f"{v:.2f}" for v in np.max(EFL_AP, 0)]
    diff = np.mean(EFL_AP, 0) - np.mean(BASE_AP, 0)
    assert rows[("EFL - focal", "diff of means")] == [f"{v:+.2f}" for v in diff]
    with open(os.path.join(out, "summary.md")) as f:
        md = f.read()
    assert rep["table"].split("\n", 1)[1] in md and "![detections.png](detections.png)" in md
    # the final EFL state per group: rare classes have the smallest g
    groups = saved["models"]["EFL"]["runs"][0]["efl_groups"]
    assert groups["r"]["g"] < groups["c"]["g"] < groups["f"]["g"]
    assert groups["r"]["gamma"] == pytest.approx(2.0 + 8.0 * (1 - groups["r"]["g"]), rel=1e-5)


def test_single_runs_and_a_rebuild_replace_the_report(runs, tmp_path):
    _, base, efl = runs
    out = str(tmp_path / "single")
    build_report(base[:1], efl[:1], out, num_images=0)
    assert os.path.exists(os.path.join(out, "summary.json"))
    rep = build_report(base[:1], efl[:1], out, labels=("FL", "EFL"), num_images=0)
    names = [line.split("|")[2].strip() for line in rep["table"].splitlines()[3:]]
    assert names == ["seed 0", "seed 0", "difference"]  # no mean/std rows for one run
    assert "detections.png" not in os.listdir(out)
    assert rep["skipped_plots"] == {"detections.png": "num_images=0"}
    assert sorted(os.listdir(tmp_path)) == ["single"]


def test_missing_results_raises_and_writes_nothing(runs, tmp_path):
    _, base, efl = runs
    broken = tmp_path / "broken"
    os.makedirs(broken)
    for name in ("run_info.json", "metrics.json", "model_final.pth"):
        with open(os.path.join(efl[0], name), "rb") as src, open(broken / name, "wb") as dst:
            dst.write(src.read())
    out = tmp_path / "report"
    with pytest.raises(FileNotFoundError,
                       match=r"broken has no results.json: was the run evaluated"):
        build_report(base, [str(broken)], str(out))
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["broken"]
    with pytest.raises(MissingRunFile, match="nowhere is not a folder"):
        build_report(base, [str(tmp_path / "nowhere")], str(out))
    with open(broken / "results.json", "w") as f:
        f.write('{"iteration": 3, "results": {"segm": {}}}')
    with pytest.raises(BadRunFolder, match="results.json has no box results"):
        build_report(base, [str(broken)], str(out))
    assert not out.exists()


def test_refuses_to_replace_a_folder_that_is_not_a_report(runs, tmp_path):
    _, base, efl = runs
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a report"):
        build_report(base[:1], efl[:1], str(tmp_path), num_images=0)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="would replace the run folder"):
        build_report(base[:1], efl[:1], os.path.dirname(base[0]), num_images=0)


def test_missing_images_skip_the_detections_panel_with_a_warning(runs, tmp_path):
    _, base, efl = runs
    moved = str(tmp_path / "focal_moved")
    shutil.copytree(base[0], moved)  # a copy: the module's folders are shared
    with open(os.path.join(moved, "run_info.json")) as f:
        info = json.load(f)
    with open(os.path.join(moved, "run_info.json"), "w") as f:
        json.dump({**info, "image_root": str(tmp_path / "no_images") + "/"}, f)
    rep = build_report([moved], efl[:1], str(tmp_path / "report"), num_images=2)
    assert "detections.png" in rep["skipped_plots"]
    assert any("detections.png not drawn" in w for w in rep["warnings"])
    files = os.listdir(tmp_path / "report")
    assert "detections.png" not in files and "summary.md" in files
    assert "efl_state_vs_instances.png" in files


def test_read_metrics_skips_bad_lines_and_keeps_the_resumed_values(tmp_path):
    path = tmp_path / "metrics.json"
    lines = [{"iteration": 0, "total_loss": 3.0}, {"iteration": 1, "total_loss": 2.0},
             {"iteration": 1, "total_loss": 2.5, "lr": 0.1}, {"iteration": 2, "bbox/AP": 5.0}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"iteration": 3, "tot')
    m = read_metrics(str(path))
    assert m["total_loss"][0].tolist() == [0, 1] and m["total_loss"][1].tolist() == [3.0, 2.5]
    assert m["bbox/AP"][0].tolist() == [2]


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_streamed_detections_equal_json_load(tmp_path, chunk):
    rng = np.random.default_rng(0)
    dets = [{"image_id": int(i), "category_id": int(rng.integers(1, 1204)),
             "bbox": [float(v) for v in rng.random(4) * 100], "score": float(rng.random())}
            for i in range(200)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dets))
    assert list(_iter_json_array(str(path), chunk_size=chunk)) == dets
    (tmp_path / "e.json").write_text(" [ ] ")
    assert list(_iter_json_array(str(tmp_path / "e.json"), chunk_size=chunk)) == []
    (tmp_path / "cut.json").write_text(json.dumps(dets)[:-30])
    with pytest.raises(ValueError):
        list(_iter_json_array(str(tmp_path / "cut.json"), chunk_size=chunk))


@pytest.mark.slow
def test_cli_end_to_end_prints_the_table_last(runs, tmp_path):
    _, base, efl = runs
    out = tmp_path / "cli_report"
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "projects", "EFL")}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "compare.py"), "--baseline", *base[:2],
         "--efl", *efl, "--out", str(out), "--labels", "focal", "EFL", "--num-images", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    with open(out / "summary.json") as f:
        table = json.load(f)["table"]
    assert proc.stdout.rstrip().endswith(table)
    assert sorted(os.listdir(out)) == sorted(REPORT_FILES)


def test_cli_error_is_one_line_without_traceback(runs, tmp_path, capsys):
    import importlib.util

    _, _, efl = runs
    spec = importlib.util.spec_from_file_location(
        "compare_cli", os.path.join(ROOT, "tools", "compare.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    code = cli.main(["--baseline", str(tmp_path), "--efl", *efl, "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path} has no run_info.json" in err and "Traceback" not in err
    assert not (tmp_path / "rep").exists()


def test_apfixed_columns_appear_only_when_results_hold_them(runs, report, tmp_path):
    from efl.evaluation import FIXED_KEYS

    _, rep = report  # the fixture's results have no APfixed: the six columns only
    assert rep["metrics"] == list(METRICS)
    assert "APfixed" not in rep["table"]
    _, base, efl = runs
    fixed = str(tmp_path / "efl_fixed")
    shutil.copytree(efl[0], fixed)
    with open(os.path.join(fixed, "results.json")) as f:
        record = json.load(f)
    values = dict(zip(FIXED_KEYS.values(), (16.5, 7.25, 11.0, 19.75)))
    record["results"]["bbox"].update(values)
    with open(os.path.join(fixed, "results.json"), "w") as f:
        json.dump(record, f)
    rep = build_report(base[:1], [fixed], str(tmp_path / "report"), num_images=0)
    assert rep["metrics"] == list(METRICS) + list(FIXED_KEYS.values())
    header, _, *rows = rep["table"].splitlines()[1:]
    assert [c.strip() for c in header.strip("|").split("|")][3:] == rep["metrics"]
    cells = {r.split("|")[1].strip() or "?": [c.strip() for c in r.strip("|").split("|")][3:]
             for r in rows}
    assert cells["EFL"][len(METRICS):] == [f"{v:.2f}" for v in values.values()]
    assert cells["focal"][len(METRICS):] == ["n/a"] * 4  # the baseline's results lack it
    with open(os.path.join(tmp_path, "report", "summary.md")) as f:
        assert "APfixed (and its r/c/f parts)" in f.read()


def test_the_efl_activity_note_and_the_machine_stand_in_the_report(runs, report, tmp_path):
    from efl.activity import FOCAL_LIKE_G

    out, rep = report  # the fixture's EFL runs: rare g ~0.2-0.3, EFL is at work: no note
    assert all(r["efl_note"] is None for r in rep["models"]["EFL"]["runs"])
    with open(os.path.join(out, "summary.md")) as f:
        md = f.read()
    assert "acting almost as focal loss" not in md and "not recorded" in md
    _, base, efl = runs
    near_one = str(tmp_path / "efl_near_one")
    shutil.copytree(efl[0], near_one)
    path = os.path.join(near_one, "model_final.pth")
    ckpt = torch.load(path, weights_only=True)
    state = ckpt["model"]
    state["efl.pos_neg"] = torch.full_like(state["efl.pos_neg"], 0.95)
    state["efl.pos_grad"] = 0.95 * state["efl.neg_grad"]
    torch.save(ckpt, path)
    info_path = os.path.join(near_one, "run_info.json")
    with open(info_path) as f:
        info = json.load(f)
    info.update(cpu="AMD EPYC (family 25, model 17, stepping 1)", torch_threads=2,
                cpu_capability="AVX512")
    with open(info_path, "w") as f:
        json.dump(info, f)
    rep = build_report(base[:1], [near_one], str(tmp_path / "report"), num_images=0)
    note = rep["models"]["EFL"]["runs"][0]["efl_note"]
    assert note.startswith("EFL is acting almost as focal loss here: at the end of training")
    assert "rare classes' mean g is 0.950" in note and f">= {FOCAL_LIKE_G}" in note
    assert rep["models"]["EFL"]["runs"][0]["machine"] == (
        "AMD EPYC (family 25, model 17, stepping 1), AVX512, 2 threads")
    with open(os.path.join(tmp_path, "report", "summary.md")) as f:
        lines = f.read().splitlines()
    plot = lines.index("![efl_state_vs_instances.png](efl_state_vs_instances.png)")
    assert lines[plot + 2] == f"- EFL seed 0: {note}"  # beside the state plot
    assert any("AMD EPYC (family 25, model 17, stepping 1), AVX512, 2 threads" in x for x in lines)
