"""The N-way report (efl.report.nway, tools/compare.py --runs/--sweep) on fabricated
output folders over the tiny generated dataset: numbers, spreads, plots, errors."""

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ROOT
from test_report import make_run
from efl.errors import InputError
from efl.report import METRICS, NWAY_FILES, build_nway_report, settings_of

AP = {  # setting -> per-seed (AP, AP50, AP75, APr, APc, APf)
    "focal": [(10.0, 20.0, 8.0, 0.0, 5.0, 15.0), (12.0, 22.0, 9.0, 1.0, 6.0, 17.0),
              (11.0, 21.0, 10.0, 2.0, 7.0, 16.0)],
    "efl": [(13.0, 24.0, 11.0, 4.0, 9.0, 18.0), (14.5, 25.0, 12.5, 6.5, 10.0, 18.5)],
    "eqlv2": [(11.5, 21.0, 9.5, 3.0, 6.0, 16.0), (11.0, 20.0, 9.0, 1.0, 7.0, 15.0),
              (12.5, 22.0, 9.0, 2.0, 8.0, 17.5)],
}


def _with_focal_statistics(folder):
    """A focal run whose statistics tap was on: the state under the new key names."""
    path = os.path.join(folder, "model_final.pth")
    ckpt = torch.load(path, weights_only=True)
    K = json.load(open(os.path.join(folder, "run_info.json")))["num_classes"]
    g = torch.linspace(0.3, 0.9, K)
    ckpt["model"].update({"cls_loss.pos_grad": g * 5, "cls_loss.neg_grad": torch.full((K,), 5.0),
                          "cls_loss.pos_neg": g})
    torch.save(ckpt, path)


@pytest.fixture(scope="module")
def settings(tiny_dataset, tmp_path_factory):
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(f"{tiny_dataset}_val")
    root = tmp_path_factory.mktemp("nway")
    out = {}
    for k, (label, table) in enumerate(AP.items()):
        out[label] = [
            make_run(str(root / f"{label}_s{s}"), meta.json_file, meta.image_root, seed=s,
                     bbox=dict(zip(METRICS, ap)), efl=(2.0, 8.0, 0.25) if label == "efl" else None,
                     rng_seed=10 * k + s)
            for s, ap in enumerate(table)]
    _with_focal_statistics(out["focal"][0])
    return root, out


def test_table_means_spreads_and_differences_equal_the_inputs(settings, tmp_path):
    _, dirs = settings
    rep = build_nway_report(dirs, str(tmp_path / "rep"), baseline="focal")
    saved = json.load(open(tmp_path / "rep" / "summary.json"))
    assert saved["labels"] == ["focal", "efl", "eqlv2"] and saved["baseline"] == "focal"
    assert "n-1" in saved["spread"]
    for label, table in AP.items():
        arr = np.array(table)
        s = saved["settings"][label]
        assert s["n"] == len(table)
        for j, m in enumerate(METRICS):
            assert s["mean"][m] == pytest.approx(arr[:, j].mean())
            assert s["std"][m] == pytest.approx(arr[:, j].std(ddof=1))
    base = np.array(AP["focal"])
    for label in ("efl", "eqlv2"):
        arr = np.array(AP[label])
        d = saved["differences"][label]
        for j, m in enumerate(METRICS):
            se = math.sqrt(arr[:, j].var(ddof=1) / len(arr) + base[:, j].var(ddof=1) / len(base))
            assert d["mean"][m] == pytest.approx(arr[:, j].mean() - base[:, j].mean())
            assert d["spread"][m] == pytest.approx(se)
            assert d["exceeds"][m] == (abs(d["mean"][m]) > 2 * se)
    assert saved["differences"]["efl"]["exceeds"]["APr"] is True  # +4.25 vs se ~1.3
    assert saved["differences"]["eqlv2"]["exceeds"]["AP"] is False
    # the text table: a row per setting, then a row per difference
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")][2:]
            for line in rep["table"].splitlines()[3:]}
    assert list(rows) == ["focal (baseline)", "efl", "eqlv2", "efl - focal", "eqlv2 - focal"]
    eqlv2 = np.array(AP["eqlv2"])
    assert rows["eqlv2"][0] == f"{eqlv2[:, 0].mean():.2f} ± {eqlv2[:, 0].std(ddof=1):.2f}"
    efl_apr = saved["differences"]["efl"]
    assert rows["efl - focal"][3] == (f"{efl_apr['mean']['APr']:+.2f} ± "
                                      f"{efl_apr['spread']['APr']:.2f}*")
    md = open(tmp_path / "rep" / "summary.md").read()
    assert rep["table"].split("\n", 1)[1] in md and "## Runs" in md


def test_plots_include_every_run_with_statistics(settings, tmp_path):
    _, dirs = settings
    rep = build_nway_report(dirs, str(tmp_path / "rep"))
    assert rep["baseline"] == "focal"  # the first setting by default
    assert sorted(os.listdir(tmp_path / "rep")) == sorted(NWAY_FILES)
    assert rep["plots"] == ["ap_by_group.png", "g_vs_instances.png", "g_over_iterations.png"]
    for name in rep["plots"]:
        with Image.open(tmp_path / "rep" / name) as im:
            assert im.format == "PNG" and np.asarray(im.convert("L")).std() > 5
    runs = {lb: s["runs"] for lb, s in rep["settings"].items()}
    # the focal run with the statistics tap (cls_loss.* keys) has g but no gamma
    assert runs["focal"][0]["g_groups"]["all"]["g"] == pytest.approx(0.6, abs=1e-5)
    assert "gamma" not in runs["focal"][0]["g_groups"]["all"]
    assert runs["focal"][1]["g_groups"] is None and runs["eqlv2"][0]["g_groups"] is None
    assert "gamma" in runs["efl"][0]["g_groups"]["r"]  # EFL's state under efl.* keys
    with Image.open(tmp_path / "rep" / "g_vs_instances.png") as im:
        assert im.size[0] > 900  # two panels: focal and efl


def test_without_statistics_the_state_plots_are_skipped_saying_why(settings, tmp_path):
    _, dirs = settings
    rep = build_nway_report({"a": dirs["eqlv2"][:1], "b": dirs["focal"][1:]},
                            str(tmp_path / "rep"), baseline="b")
    assert set(rep["skipped_plots"]) == {"g_vs_instances.png", "g_over_iterations.png"}
    assert "no run has loss statistics" in rep["skipped_plots"]["g_vs_instances.png"]
    # one run: no spread, the difference has none either
    assert math.isnan(rep["differences"]["a"]["spread"]["AP"])
    assert rep["differences"]["a"]["exceeds"]["AP"] is None


@pytest.mark.parametrize("bad, match", [
    ({}, "at least one setting"),
    ({"a": []}, "no output folder"),
    ({"a": ["x"], "b": ["x"]}, "more than once"),
])
def test_bad_settings_raise_and_write_nothing(bad, match, tmp_path):
    with pytest.raises(InputError, match=match):
        build_nway_report(bad, str(tmp_path / "rep"))
    assert not (tmp_path / "rep").exists()


def test_unknown_baseline_and_bad_runs_items(settings, tmp_path):
    _, dirs = settings
    with pytest.raises(InputError, match="baseline 'nope' is not one of"):
        build_nway_report(dirs, str(tmp_path / "rep"), baseline="nope")
    assert settings_of(["a=x,y", "b=z"]) == {"a": ["x", "y"], "b": ["z"]}
    for item in (["a"], ["=x"], ["a="], ["a=x", "a=y"]):
        with pytest.raises(InputError):
            settings_of(item)


def test_cli_runs_form_prints_the_table_and_errors_exit_2(settings, tmp_path, capsys):
    import importlib.util

    _, dirs = settings
    spec = importlib.util.spec_from_file_location("compare_cli", os.path.join(ROOT, "tools",
                                                                              "compare.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    runs = [f"{lb}={','.join(d)}" for lb, d in dirs.items()]
    assert cli.main(["--runs", *runs, "--baseline", "efl", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "eqlv2 - efl" in out and out.rstrip().endswith(
        json.load(open(tmp_path / "r" / "summary.json"))["table"])
    code = cli.main(["--runs", *runs, "--baseline", "a", "b", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "takes one setting label" in err and "Traceback" not in err
    code = cli.main(["--runs", "x=" + str(tmp_path / "none"), "--out", str(tmp_path / "s")])
    assert code == 2 and "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_cli_sweep_form_reads_the_manifest_and_leaves_out_unfinished_runs(settings, tmp_path,
                                                                           capsys):
    import importlib.util

    from efl.experiments.grid import expand_grid, write_manifest

    _, dirs = settings
    sweep = tmp_path / "sweep"
    grid = expand_grid([("model.efl.scale_factor", ["0", "8"])], [0, 1])
    os.makedirs(sweep)
    sources = dirs["focal"][:2] + dirs["efl"][:1]  # the last run has not finished
    for run, src in zip(grid, sources):
        shutil.copytree(src, sweep / run.folder)
    write_manifest(str(sweep), "cfg.py", [("model.efl.scale_factor", ["0", "8"])], [0, 1], [],
                   grid)
    spec = importlib.util.spec_from_file_location("compare_cli", os.path.join(ROOT, "tools",
                                                                              "compare.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["--sweep", str(sweep), "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert "not finished, left out: scale_factor=8_seed1" in captured.err
    saved = json.load(open(tmp_path / "r" / "summary.json"))
    assert saved["labels"] == ["scale_factor=0", "scale_factor=8"]
    assert saved["settings"]["scale_factor=8"]["n"] == 1
