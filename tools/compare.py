#!/usr/bin/env python
"""Compare detectors from training output folders (one per run/seed).

Two models (focal-loss baseline vs EFL; writes summary.md, summary.json, ap_by_group.png,
efl_state_vs_instances.png, loss_curves.png and detections.png):

    python tools/compare.py --baseline output/focal_s0 output/focal_s1 \\
                            --efl output/efl_s0 output/efl_s1 --out output/report
    python tools/compare.py --baseline A --efl B --out R --labels focal EFL --num-images 6

Any number of labelled settings, several seeds each (writes summary.md, summary.json,
ap_by_group.png, g_vs_instances.png, g_over_iterations.png; efl.report.nway):

    python tools/compare.py --runs focal=out/f_s0,out/f_s1 efl=out/e_s0,out/e_s1 \\
                            eqlv2=out/q_s0,out/q_s1 --baseline focal --out output/report
    python tools/compare.py --sweep output/sweep_s --baseline scale_factor=0 --out R

With --runs or --sweep, --baseline is the label the differences are taken to (default:
the first setting); --sweep reads tools/sweep.py's manifest (its folder or the file) and
reports the runs that finished. Prints the AP table last.
"""

import argparse
import logging
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", nargs="+", metavar="DIR_OR_LABEL",
                   help="two-model form: output folder(s) of the baseline (focal loss) runs; "
                        "with --runs/--sweep: the label of the baseline setting")
    p.add_argument("--efl", nargs="+", metavar="DIR",
                   help="two-model form: output folder(s) of the EFL runs")
    p.add_argument("--runs", nargs="+", metavar="LABEL=DIR[,DIR...]",
                   help="N-way form: settings, each a label and its runs' folders")
    p.add_argument("--sweep", metavar="SWEEP_DIR",
                   help="N-way form: the settings of a tools/sweep.py grid (its --out folder "
                        "or its sweep.json)")
    p.add_argument("--out", required=True, metavar="REPORT_DIR",
                   help="report folder (a previous report there is replaced)")
    p.add_argument("--labels", nargs=2, default=["focal", "EFL"], metavar=("BASELINE", "EFL"),
                   help="two-model form: names of the two models (default: focal EFL)")
    p.add_argument("--num-images", type=int, default=4,
                   help="two-model form: validation images in detections.png (default 4)")
    p.add_argument("--score-thresh", type=float, default=0.3,
                   help="two-model form: smallest score of a drawn detection (default 0.3)")
    return p.parse_args(argv)


def _nway_settings(args):
    """(settings, baseline label) of the N-way form (InputError on a bad combination)."""
    from efl.errors import InputError
    from efl.report import settings_of

    if args.efl or (args.runs and args.sweep):
        raise InputError("give either --baseline DIR... --efl DIR... (two models) or --runs "
                         "LABEL=DIR,... / --sweep DIR (N settings), not both")
    if args.baseline and len(args.baseline) != 1:
        raise InputError(f"with --runs/--sweep, --baseline takes one setting label; got "
                         f"{args.baseline}")
    if args.runs:
        settings = settings_of(args.runs)
    else:
        from efl.experiments.grid import settings_from_manifest

        settings, missing = settings_from_manifest(args.sweep)
        for name in missing:
            print(f"[compare] not finished, left out: {name}", file=sys.stderr)
    return settings, args.baseline[0] if args.baseline else None


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[compare] %(levelname)s %(message)s",
                        stream=sys.stderr)
    from efl.errors import InputError, report_input_error
    from efl.report import build_nway_report, build_report

    try:
        if args.runs or args.sweep:
            settings, baseline = _nway_settings(args)
            report = build_nway_report(settings, args.out, baseline=baseline)
        else:
            if not (args.baseline and args.efl):
                raise InputError("give --baseline DIR... and --efl DIR... (two models), or "
                                 "--runs LABEL=DIR[,DIR...] ... / --sweep DIR (N settings)")
            report = build_report(args.baseline, args.efl, args.out, labels=tuple(args.labels),
                                  num_images=args.num_images, score_thresh=args.score_thresh)
    except (InputError, ValueError, FileNotFoundError) as e:
        return report_input_error(e)
    sys.stderr.flush()
    print(f"report: {report['out_dir']}")
    print(report["table"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
