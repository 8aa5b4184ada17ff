#!/usr/bin/env python
"""Per-image CPU latency of a detector: eager PyTorch vs its TorchScript export vs its ONNX
export in ONNX Runtime, measured in the same run (interleaved), printed as ratios to eager.

    python tools/benchmark_export.py            # 128x128 and 800x1333
    python tools/benchmark_export.py --quick    # 128x128 only
    python tools/benchmark_export.py --large-config configs/LVISv1/retinanet_R_50_FPN_2x_efl.py

Model: configs/Synthetic/retinanet_efl.py (the demo's EFLRetinaNet: half-width
ResNet-18-FPN, 120 classes) at both sizes, weights from --weights or random (the work per
image hardly depends on them: with the 1e-4 score threshold, top-k and NMS see the 1000
top-scoring boxes per level either way). --large-config picks another model for 800x1333:
the LVIS R-50 (1203 classes) needs well over 10 GB there, since with random weights all of
its ~181M class scores pass the 1e-4 threshold and their indices alone take 2.9 GB. Prints
the load average before and after: on a shared machine the ratios hold better than the
absolute times.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

CASES = {
    "128x128": ("configs/Synthetic/retinanet_efl.py", (128, 128), 20),
    "800x1333": ("configs/Synthetic/retinanet_efl.py", (800, 1333), 5),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="128x128 only")
    p.add_argument("--weights", metavar="PTH", help="weights of the 128x128 model (default: random)")
    p.add_argument("--large-config", metavar="FILE", help="model for 800x1333 (random weights)")
    p.add_argument("--repeats", type=int, help="timed images per runtime (default 20 / 5)")
    return p.parse_args(argv)


def build(config, weights=None):
    import torch

    from efl.engine import Trainer, load_config
    from efl.export import load_weights

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, config), ["train.device=cpu"])
    if "class_groups" in (cfg.model.get("cls_loss") or {}):
        cfg.model.cls_loss.class_groups = None
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    if weights:
        load_weights(model, weights)
    return model.eval()


def measure(name, model, size, repeats):
    """{runtime: median seconds per image} for eager, TorchScript and ONNX Runtime."""
    import torch

    from efl.export import eager, export_detector, load_exported

    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0)) * 255
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"eager": eager(model)}
        for fmt in ("torchscript", "onnx"):
            start = time.perf_counter()
            runs[fmt] = load_exported(export_detector(model, fmt, tmp, image))
            print(f"[{name}] exported {fmt} in {time.perf_counter() - start:.1f} s", flush=True)
        times = {k: [] for k in runs}
        for k, run in runs.items():  # warm-up (TorchScript optimises on its first calls)
            for _ in range(2):
                run(image)
        for _ in range(repeats):  # interleaved: load changes hit all three alike
            for k, run in runs.items():
                start = time.perf_counter()
                run(image)
                times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    cases = {k: v for k, v in CASES.items() if not (args.quick and k != "128x128")}
    load_before = os.getloadavg()
    rows = []
    for name, (config, size, repeats) in cases.items():
        if name == "800x1333" and args.large_config:
            config, weights = args.large_config, None
        else:
            weights = args.weights
        model = build(config, weights)
        t = measure(name, model, size, args.repeats or repeats)
        rows.append((name, f"{type(model).__name__} ({os.path.basename(config)})", t))
    load_after = os.getloadavg()
    print(f"\nCPU, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{os.cpu_count()} cores; load average (1/5/15 min) before "
          f"{'/'.join(f'{x:.1f}' for x in load_before)}, after "
          f"{'/'.join(f'{x:.1f}' for x in load_after)}; median per image")
    print("| input | model | eager | TorchScript / eager | ONNX Runtime / eager |")
    print("| --- | --- | --- | --- | --- |")
    for name, arch, t in rows:
        print(f"| {name} | {arch} | {t['eager'] * 1000:.0f} ms | "
              f"{t['torchscript'] / t['eager']:.2f} ({t['torchscript'] * 1000:.0f} ms) | "
              f"{t['onnx'] / t['eager']:.2f} ({t['onnx'] * 1000:.0f} ms) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
