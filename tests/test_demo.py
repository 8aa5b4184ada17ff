"""tools/demo.py's choice of losses (--losses): configs, unknown names, and which report
it writes (trainings replaced by fabricated run folders)."""

import importlib.util
import json
import os

import pytest

from helpers import ROOT
from test_report import make_run
from efl.errors import InputError
from efl.report import METRICS, NWAY_FILES, REPORT_FILES


def _demo():
    spec = importlib.util.spec_from_file_location("demo_cli", os.path.join(ROOT, "tools", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_loss_names_map_to_configs_and_unknown_ones_list_what_exists(capsys):
    demo = _demo()
    assert demo.loss_configs("retinanet", None) == {
        "focal": "configs/Synthetic/retinanet_focal.py", "efl": "configs/Synthetic/retinanet_efl.py"}
    assert demo.loss_configs("improved", "efl,focal") == {
        "efl": "configs/Synthetic/improved_efl.py", "focal": "configs/Synthetic/improved_focal.py"}
    assert list(demo.loss_configs("quality", None)) == ["qfl", "eqfl"]
    with pytest.raises(InputError, match="distinct"):
        demo.loss_configs("retinanet", "focal,focal")
    assert demo.main(["--losses", "focal,nosuchloss"]) == 2
    err = capsys.readouterr().err
    assert "no config for nosuchloss" in err and "configs/Synthetic/retinanet_nosuchloss.py" in err
    have = sorted(f[len("retinanet_"):-3] for f in os.listdir(os.path.join(ROOT, "configs", "Synthetic"))
                  if f.startswith("retinanet_"))
    assert f"are: {', '.join(have)}." in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("losses, files", [(None, REPORT_FILES), ("efl,focal", NWAY_FILES)])
def test_default_pair_keeps_todays_report_and_other_sets_write_the_nway_one(
        losses, files, tiny_dataset, tmp_path, monkeypatch, capsys):
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(f"{tiny_dataset}_val")
    demo = _demo()
    trained = []

    def fake_train(name, config, seed, out_dir, opts):
        trained.append((name, config, seed, os.path.relpath(out_dir, tmp_path)))
        ap = (12.0 + seed, 20.0, 9.0, 1.0 + seed, 6.0, 16.0) if "focal" in config else \
            (13.0 + seed, 21.0, 10.0, 3.0 + seed, 7.0, 17.0)
        make_run(out_dir, meta.json_file, meta.image_root, seed=seed,
                 bbox=dict(zip(METRICS, ap)), efl=(2.0, 8.0, 0.25) if "efl" in config else None)

    monkeypatch.setattr(demo, "train", fake_train)
    argv = ["--seeds", "0", "1", "--output", str(tmp_path)] + (["--losses", losses] if losses else [])
    assert demo.main(argv) == 0
    assert [t[3] for t in trained[:2]] == (["seed0/focal", "seed0/efl"] if losses is None
                                           else ["seed0/efl", "seed0/focal"])
    assert sorted(os.listdir(tmp_path / "report")) == sorted(files)
    summary = json.load(open(tmp_path / "report" / "summary.json"))
    if losses:
        assert summary["labels"] == ["EFL", "focal"] and summary["baseline"] == "EFL"
        assert summary["settings"]["focal"]["n"] == 2
    else:
        assert summary["labels"] == ["focal", "EFL"]
    assert capsys.readouterr().out.rstrip().endswith(summary["table"])
