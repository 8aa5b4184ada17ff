#!/usr/bin/env python
"""Compare a focal-loss baseline with EFL from training output folders (one per run/seed).

    python tools/compare.py --baseline output/focal_s0 output/focal_s1 \\
                            --efl output/efl_s0 output/efl_s1 --out output/report
    python tools/compare.py --baseline A --efl B --out R --labels focal EFL --num-images 6

Writes summary.md, summary.json, ap_by_group.png, efl_state_vs_instances.png,
loss_curves.png and detections.png into --out (see efl.report), then prints the
AP table last.
"""

import argparse
import logging
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", nargs="+", required=True, metavar="DIR",
                   help="output folder(s) of the baseline (focal loss) runs")
    p.add_argument("--efl", nargs="+", required=True, metavar="DIR",
                   help="output folder(s) of the EFL runs")
    p.add_argument("--out", required=True, metavar="REPORT_DIR",
                   help="report folder (a previous report there is replaced)")
    p.add_argument("--labels", nargs=2, default=["focal", "EFL"], metavar=("BASELINE", "EFL"),
                   help="names of the two models (default: focal EFL)")
    p.add_argument("--num-images", type=int, default=4,
                   help="validation images in detections.png (default 4; 0: none)")
    p.add_argument("--score-thresh", type=float, default=0.3,
                   help="smallest score of a drawn detection (default 0.3)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[compare] %(levelname)s %(message)s",
                        stream=sys.stderr)
    from efl.errors import InputError, report_input_error
    from efl.report import build_report

    try:
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
