#!/usr/bin/env python
"""The main job: train Detectron2's stock RetinaNet (focal loss) and EFL RetinaNet with
identical settings on the embedded long-tailed synthetic dataset, evaluate both with
LVISEvaluator, and write a comparison report (table + plots).

    python tools/demo.py                      # one seed (0), output/demo/
    python tools/demo.py --seeds 0 1 2        # three training seeds: per-seed table + mean
    python tools/demo.py --detector improved  # the authors' improved detector (ATSS) instead
    python tools/demo.py --detector quality   # its quality-score variant, QFL vs EQFL

Each run is ``train_net.py`` in its own process; a finished run is reused when the demo
is started again with the same settings, an interrupted one resumes from its last
checkpoint, and one with other settings is trained again from scratch.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETECTORS = {  # --detector -> {loss: config}
    "retinanet": {"focal": "configs/Synthetic/retinanet_focal.py",
                  "efl": "configs/Synthetic/retinanet_efl.py"},
    "improved": {"focal": "configs/Synthetic/improved_focal.py",
                 "efl": "configs/Synthetic/improved_efl.py"},
    # the baseline's role is "focal", the equalized loss's "efl"; LABELS names them
    "quality": {"focal": "configs/Synthetic/quality_qfl.py",
                "efl": "configs/Synthetic/quality_eqfl.py"},
}
LABELS = {"quality": ("QFL", "EQFL")}  # --detector -> report labels (default focal / EFL)
STAMP = "demo_run.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    p.add_argument("--detector", choices=sorted(DETECTORS), default="retinanet",
                   help="retinanet: Detectron2's RetinaNet (default); improved: the EFL "
                        "authors' ATSS-style detector (ATSSRetinaNet); quality: its "
                        "quality-score variant, QFL vs EQFL (QualityATSSRetinaNet)")
    p.add_argument("--output", default="output/demo", help="folder for runs and report")
    p.add_argument("--opts", nargs="*", default=[],
                   help="extra key=value config overrides for both models, e.g. train.max_iter=500")
    return p.parse_args(argv)


def _finished(out_dir, settings):
    """A run with these settings whose final evaluation was written."""
    from efl.records import RunRecord

    try:
        with open(os.path.join(out_dir, STAMP)) as f:
            same = json.load(f) == settings
        with open(os.path.join(out_dir, "results.json")) as f:
            results = json.load(f)
        done = results["iteration"] == RunRecord.read(out_dir).max_iter
        return same and done
    except (OSError, ValueError, KeyError):
        return False


def train(name, config, seed, out_dir, opts):
    settings = {"config": config, "seed": seed, "opts": opts}
    if _finished(out_dir, settings):
        print(f"[demo] {name} seed {seed}: finished run found in {out_dir}, reused", flush=True)
        return
    resume = False
    if os.path.isdir(out_dir):
        try:
            with open(os.path.join(out_dir, STAMP)) as f:
                resume = json.load(f) == settings and os.path.exists(
                    os.path.join(out_dir, "last_checkpoint"))
        except (OSError, ValueError):
            resume = False
        if not resume:
            shutil.rmtree(out_dir)  # another setting: train again from scratch
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, STAMP), "w") as f:
        json.dump(settings, f)
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file",
           os.path.join(ROOT, config)]
    cmd += ["--resume"] if resume else []
    cmd += [f"train.output_dir={out_dir}", f"train.seed={seed}", *opts]
    print(f"[demo] {name} seed {seed}: {'resuming' if resume else 'training'} -> {out_dir}", flush=True)
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"[demo] {name} seed {seed} failed (exit {proc.returncode}); see {out_dir}/log.txt")
    print(f"[demo] {name} seed {seed}: done in {time.time() - start:.0f} s", flush=True)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    output = os.path.abspath(args.output)
    models = DETECTORS[args.detector]
    prefix = "" if args.detector == "retinanet" else f"{args.detector}_"
    runs = {name: [] for name in models}
    for seed in args.seeds:
        for name, config in models.items():
            out_dir = os.path.join(output, f"seed{seed}", prefix + name)
            train(prefix + name, config, seed, out_dir, args.opts)
            runs[name].append(out_dir)

    from efl.report import build_report

    report_dir = os.path.join(output, prefix + "report")
    labels = LABELS.get(args.detector, ("focal", "EFL"))
    report = build_report(runs["focal"], runs["efl"], report_dir, labels=labels)
    print(f"\n[demo] report: {report_dir} ({', '.join(sorted(os.listdir(report_dir)))})")
    print(f"[demo] wall time: {(time.time() - start) / 60:.1f} min")
    for model in report["models"].values():
        for run in model["runs"]:
            print(f"[demo] {model['label']} {run['name']} trained on: {run['machine']}")
            if run["efl_note"]:
                print(f"[demo] {model['label']} {run['name']}: {run['efl_note']}")
    print()
    print(report["table"])


if __name__ == "__main__":
    main()
