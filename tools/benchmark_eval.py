#!/usr/bin/env python
"""Benchmark LVIS box evaluation: ``efl.evaluation.evaluate_lvis`` with the fast backend
against lvis-api (``backend="lvis"``) on random LVIS-shaped data (``efl.evaluation.lvis_like``:
LVIS v1 val's size by default, 19,809 images, 1203 classes, 300 detections per image).

Each backend runs in its own process, on the same data (same seed), generated in that
process before the clock starts; time is the evaluation alone (wall and CPU time: on a
shared machine the CPU time is the steadier figure), peak memory is the
process's peak resident memory during the evaluation (the peak is reset after generating
the data) above the resident memory before it. Both backends' numbers are compared key
by key.

    python tools/benchmark_eval.py                      # LVIS v1 val size (lvis-api: ~15 min, >20 GB)
    python tools/benchmark_eval.py --images 4000        # a size lvis-api finishes on a 24 GB machine
    python tools/benchmark_eval.py --images 19809 --backends fast

The last line holds the ratios fast / lvis-api measured in the same run.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "EFL"))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(args) -> dict:
    """Generate the data, then time one backend; returns figures and the metrics."""
    from efl.evaluation import evaluate_lvis
    from efl.evaluation.lvis_like import lvis_like

    start = time.perf_counter()
    gt, results = lvis_like(args.images, args.classes, args.dets, seed=args.seed)
    generated = time.perf_counter() - start
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident size (VmHWM) to the current one
    before = _status_kb("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    metrics = evaluate_lvis(gt, results, backend=args.worker, fixed_per_class=args.fixed)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _status_kb("VmHWM")
    return {"backend": args.worker, "seconds": seconds, "cpu_seconds": cpu, "peak_gb": (peak - before) / 2**20,
            "rss_before_gb": before / 2**20, "generate_s": generated, "metrics": metrics,
            "detections": len(results), "boxes": len(gt["annotations"])}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=19809)
    p.add_argument("--classes", type=int, default=1203)
    p.add_argument("--dets", type=int, default=300, help="detections per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fixed", type=int, default=None, help="evaluate APfixed with this many per class")
    p.add_argument("--backends", nargs="+", default=["fast", "lvis"], choices=["fast", "lvis"])
    p.add_argument("--worker", choices=["fast", "lvis"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    runs = {}
    for backend in args.backends:
        cmd = [sys.executable, __file__, "--worker", backend] + [
            a for k in ("images", "classes", "dets", "seed") for a in (f"--{k}", str(getattr(args, k)))
        ] + (["--fixed", str(args.fixed)] if args.fixed else [])
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        runs[backend] = json.loads(out.strip().splitlines()[-1])
        r = runs[backend]
        print(f"{backend:>4}: {r['seconds']:8.1f} s ({r['cpu_seconds']:.1f} s CPU), peak +{r['peak_gb']:.2f} GB above "
              f"{r['rss_before_gb']:.2f} GB ({args.images} images, {args.classes} classes, "
              f"{r['detections']} detections, {r['boxes']} boxes)", flush=True)
    print("load average (1, 5, 15 min):", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if len(runs) == 2:
        f, l = runs["fast"], runs["lvis"]
        diff = {k: abs(f["metrics"][k] - l["metrics"][k]) for k in f["metrics"]}
        worst = max(diff, key=diff.get)
        print("metrics (fast / lvis-api):", ", ".join(
            f"{k} {f['metrics'][k]:.4f}/{l['metrics'][k]:.4f}" for k in f["metrics"]))
        print(f"largest difference: {diff[worst]:.2e} ({worst})")
        print(f"ratios fast / lvis-api: time {f['seconds'] / l['seconds']:.3f} (CPU time "
              f"{f['cpu_seconds'] / l['cpu_seconds']:.3f}), peak memory {f['peak_gb'] / l['peak_gb']:.3f}")


if __name__ == "__main__":
    main()
