#!/usr/bin/env python
"""EFL vs focal loss at LVIS-like imbalance on one GPU: a procedural long-tailed
detection stream (300 classes in LVIS's rare/common/frequent shares, rare classes in
1e-4..1e-3 of the images, ~49k anchors per 512 px image), focal RetinaNet and EFL RetinaNet
trained identically (same seed, same images), both evaluated with the LVIS evaluator on a
fixed class-balanced validation set. Prints AP/APr/APc/APf, the final mean g per group and
the negatives per positive of the rare group; writes the same as JSON. No files needed.

    python tools/scale_probe.py                        # cuda, defaults: ~5 min for both on one H200 (estimate)
    python tools/scale_probe.py --device cpu --tiny    # toy sizes, end to end, about a minute on CPU

The design (efl/data/procedural.py: StreamDesign) is fixed from LVIS's statistics; only
the length (--iterations, --batch-size) and the seed are options.
"""

import argparse
import dataclasses
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "EFL"))

from efl.bench.scale_probe import GPU_PROBE, TINY_PROBE, format_report, run_probe  # noqa: E402
from efl.errors import InputError, report_input_error  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="toy sizes: 30 classes, 128 px, 2 iterations")
    p.add_argument("--iterations", type=int, help=f"default {GPU_PROBE.iterations} ({TINY_PROBE.iterations} with --tiny)")
    p.add_argument("--batch-size", type=int, help=f"default {GPU_PROBE.batch_size}")
    p.add_argument("--seed", type=int, default=0, help="training seed (weights); the design has its own")
    p.add_argument("--out", default="output/scale_probe/scale_probe.json")
    args = p.parse_args(argv)
    cfg = TINY_PROBE if args.tiny else GPU_PROBE
    changes = dict(seed=args.seed)
    if args.iterations is not None:
        changes["iterations"] = args.iterations
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    cfg = dataclasses.replace(cfg, **changes)
    try:
        if cfg.iterations < 1 or cfg.batch_size < 1:
            raise InputError(f"--iterations ({cfg.iterations}) and --batch-size ({cfg.batch_size}) must be >= 1")
        result = run_probe(cfg, args.device, out=args.out,
                           log=lambda s: print(s, file=sys.stderr, flush=True))
    except InputError as e:
        sys.exit(report_input_error(e))
    print(format_report(result))
    print(f"JSON: {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
