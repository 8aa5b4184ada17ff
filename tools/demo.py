#!/usr/bin/env python
"""The main job: train Detectron2's stock RetinaNet (focal loss) and EFL RetinaNet with
identical settings on the embedded long-tailed synthetic dataset, evaluate both with
LVISEvaluator, and write a comparison report (table + plots).

    python tools/demo.py                      # one seed (0), output/demo/
    python tools/demo.py --seeds 0 1 2        # three training seeds: per-seed table + mean
    python tools/demo.py --detector improved  # the authors' improved detector (ATSS) instead
    python tools/demo.py --detector quality   # its quality-score variant, QFL vs EQFL
    python tools/demo.py --losses focal,eql,eqlv2,efl   # any set of losses with a config
                                              # configs/Synthetic/<detector>_<loss>.py:
                                              # the N-way report, a row per loss

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
CONFIGS = os.path.join("configs", "Synthetic")  # <detector>_<loss>.py, relative to ROOT
DETECTORS = {  # --detector -> (config prefix, default losses: baseline first)
    "retinanet": ("retinanet", ("focal", "efl")),
    "improved": ("improved", ("focal", "efl")),
    "quality": ("quality", ("qfl", "eqfl")),
}
# Today's run folders of the default pairs: the baseline's role is "focal", the equalized
# loss's "efl" (quality_focal holds QFL); other losses' folders are named after the loss.
ROLE_FOLDERS = {"quality": {"qfl": "focal", "eqfl": "efl"}}
LOSS_LABELS = {"focal": "focal", "efl": "EFL", "qfl": "QFL", "eqfl": "EQFL", "eql": "EQL",
               "eqlv2": "EQLv2"}
STAMP = "demo_run.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    p.add_argument("--detector", choices=sorted(DETECTORS), default="retinanet",
                   help="retinanet: Detectron2's RetinaNet (default); improved: the EFL "
                        "authors' ATSS-style detector (ATSSRetinaNet); quality: its "
                        "quality-score variant, QFL vs EQFL (QualityATSSRetinaNet)")
    p.add_argument("--losses", default=None, metavar="LOSS,LOSS,...",
                   help="the losses to train and compare, the first one the baseline "
                        "(configs/Synthetic/<detector>_<loss>.py; default focal,efl, or "
                        "qfl,eqfl with --detector quality); more than the default pair "
                        "gives the N-way report, a row per loss")
    p.add_argument("--output", default="output/demo", help="folder for runs and report")
    p.add_argument("--opts", nargs="*", default=[],
                   help="extra key=value config overrides for both models, e.g. train.max_iter=500")
    return p.parse_args(argv)


def _finished(out_dir, settings):
    """A run with these settings that trained to its end (efl.records.run_finished)."""
    from efl.records import run_finished

    try:
        with open(os.path.join(out_dir, STAMP)) as f:
            same = json.load(f) == settings
    except (OSError, ValueError):
        return False
    return same and run_finished(out_dir)


def loss_configs(detector, losses):
    """{loss: config path relative to ROOT} for ``losses`` (a comma-separated text or None:
    the detector's default pair); InputError listing the configs that exist when one is
    missing."""
    from efl.errors import InputError

    prefix, default = DETECTORS[detector]
    names = list(default) if losses is None else [x.strip() for x in losses.split(",")]
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise InputError(f"--losses {losses!r} is not a comma-separated list of distinct loss "
                         f"names (e.g. --losses {','.join(default)})")
    configs = {n: os.path.join(CONFIGS, f"{prefix}_{n}.py") for n in names}
    missing = [n for n, c in configs.items() if not os.path.isfile(os.path.join(ROOT, c))]
    if missing:
        have = sorted(f[len(prefix) + 1:-3] for f in os.listdir(os.path.join(ROOT, CONFIGS))
                      if f.startswith(prefix + "_") and f.endswith(".py"))
        raise InputError(
            f"--losses: no config for {', '.join(missing)} with --detector {detector} (looked "
            f"for {', '.join(configs[n] for n in missing)}). The losses with a config "
            f"{CONFIGS}/{prefix}_<loss>.py are: {', '.join(have)}.")
    return configs


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
    from efl.errors import InputError

    try:
        configs = loss_configs(args.detector, args.losses)
    except InputError as e:
        print(f"[demo] error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    output = os.path.abspath(args.output)
    prefix = "" if args.detector == "retinanet" else f"{args.detector}_"
    folders = {n: ROLE_FOLDERS.get(args.detector, {}).get(n, n) for n in configs}
    runs = {name: [] for name in configs}
    for seed in args.seeds:
        for name, config in configs.items():
            out_dir = os.path.join(output, f"seed{seed}", prefix + folders[name])
            train(prefix + folders[name], config, seed, out_dir, args.opts)
            runs[name].append(out_dir)

    from efl.report import build_nway_report, build_report

    report_dir = os.path.join(output, prefix + "report")
    labels = {n: LOSS_LABELS.get(n, n) for n in configs}
    pair = tuple(configs) == DETECTORS[args.detector][1]
    if pair:  # today's two-model report (detections panel, EFL state and loss curves)
        base, eq = configs
        report = build_report(runs[base], runs[eq], report_dir, labels=(labels[base], labels[eq]))
    else:
        report = build_nway_report({labels[n]: runs[n] for n in configs}, report_dir)
    print(f"\n[demo] report: {report_dir} ({', '.join(sorted(os.listdir(report_dir)))})")
    print(f"[demo] wall time: {(time.time() - start) / 60:.1f} min")
    models = report["models"] if pair else report["settings"]
    for model in models.values():
        for run in model["runs"]:
            print(f"[demo] {model['label']} {run['name']} trained on: {run['machine']}")
            if run.get("efl_note"):
                print(f"[demo] {model['label']} {run['name']}: {run['efl_note']}")
    print()
    print(report["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
