#!/usr/bin/env python
"""One-command GPU check: fused EFL vs Detectron2's sigmoid_focal_loss_jit vs the readable
EFL (time, memory, compile time), training s/iter and memory (RetinaNet vs EFLRetinaNet,
the improved detector with focal vs EFL, AMP on/off), and EFL under AMP with a GradScaler.
Prints one table; writes the same as JSON. No downloads (random initialisation).

    python tools/gpu_check.py                           # cuda: about 4 minutes on one H200 (estimate)
    python tools/gpu_check.py --device cpu --tiny       # every part at toy sizes, seconds
    python tools/gpu_check.py --parts loss --out gpu_check.json
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "EFL"))

from efl.bench.gpu_check import format_table, run_gpu_check  # noqa: E402
from efl.errors import InputError, report_input_error  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="toy sizes (64x64 images, K=12, ResNet-18)")
    p.add_argument("--parts", default="loss,train,amp", help="comma-separated subset of loss,train,amp")
    p.add_argument("--out", default="output/gpu_check/gpu_check.json", help="JSON file to write")
    args = p.parse_args(argv)
    try:
        result = run_gpu_check(args.device, tiny=args.tiny, parts=args.parts.split(","),
                               out=args.out, log=lambda s: print(s, file=sys.stderr, flush=True))
    except InputError as e:
        sys.exit(report_input_error(e))
    print(format_table(result))
    print(f"JSON: {os.path.abspath(args.out)}")
    failed = [r["check"] for r in result["parts"].get("amp", []) if not r["passed"]]
    if failed:
        print(f"FAILED AMP checks: {failed}")
        sys.exit(1)


if __name__ == "__main__":
    main()
