#!/usr/bin/env python
"""Turn your own long-tailed detection data (COCO- or LVIS-format) into the LVIS-format
files the Custom configs train on: r/c/f frequency groups, image/instance counts,
category ids 1..K, negative categories (efl.data.long_tail).

    python tools/prepare_long_tail.py --train TRAIN.json --val VAL.json --image-root DIR --out OUTDIR
        [--rare-max 10 --common-max 100] [--not-exhaustive]

Writes OUTDIR/train.json and OUTDIR/val.json (the inputs are never modified), prints a
summary and the train_net.py command. Inconsistent input: one paragraph naming the file,
entry and field, exit status 2.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "EFL"))

from efl.data.long_tail import convert_long_tail, format_summary  # noqa: E402
from efl.errors import InputError, report_input_error  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True, help="training annotations (COCO or LVIS format)")
    p.add_argument("--val", required=True, help="validation annotations (COCO or LVIS format)")
    p.add_argument("--image-root", required=True,
                   help="folder the images' file_name (or coco_url's <folder>/<file>) is relative to")
    p.add_argument("--out", required=True, help="output folder for train.json and val.json")
    p.add_argument("--rare-max", type=int, default=10, help="rare: at most this many training images")
    p.add_argument("--common-max", type=int, default=100, help="common: at most this many")
    p.add_argument("--not-exhaustive", action="store_true",
                   help="the data is not exhaustively annotated: no neg_category_ids")
    args = p.parse_args(argv)
    try:
        summary = convert_long_tail(args.train, args.val, args.image_root, args.out,
                                    rare_max=args.rare_max, common_max=args.common_max,
                                    exhaustive=not args.not_exhaustive)
    except InputError as e:
        sys.exit(report_input_error(e))
    print(format_summary(summary))
    out = summary["outputs"]
    print("train with, e.g.:\n  python train_net.py --config-file configs/Custom/retinanet_efl.py "
          f"dataset.train_json={out['train']} dataset.val_json={out['val']} "
          f"dataset.image_root={summary['image_root']}")
    return summary


if __name__ == "__main__":
    main()
