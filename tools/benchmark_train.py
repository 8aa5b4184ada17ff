#!/usr/bin/env python
"""Seconds per training iteration: stock Detectron2 RetinaNet vs EFLRetinaNet.

Both models come from configs/Synthetic/retinanet_{focal,efl}.py (same weights, same
batch of random images and boxes); only the classification loss differs. Iterations of
the two models are interleaved so that machine noise hits both alike; the median of each
is reported, and the ratio EFL / stock is the last line printed.

    python tools/benchmark_train.py                 # K = 1203 (LVIS), batch 8, 128 px
    python tools/benchmark_train.py --quick         # < 1 minute
"""

import argparse
import copy
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "EFL"))

from efl.bench.detectors import random_batch  # noqa: E402  (shared with tools/gpu_check.py)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-classes", type=int, default=1203)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--iters", type=int, default=20, help="timed iterations per model")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="batch 4, 10 iterations")
    p.add_argument("--device", default="cpu")
    return p.parse_args()


def build(kind, num_classes, device):
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(os.path.join(ROOT, f"configs/Synthetic/retinanet_{kind}.py"))
    cfg.model.num_classes = num_classes
    if "class_groups" in (cfg.model.get("cls_loss") or {}):
        cfg.model.cls_loss.class_groups = None
    torch.manual_seed(0)
    return instantiate(cfg.model).to(device).train()


def step(model, optimizer, data):
    from detectron2.utils.events import EventStorage

    start = time.perf_counter()
    with EventStorage():
        loss = sum(model(copy.copy(data)).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if torch.cuda.is_available() and next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    args = parse_args()
    if args.quick:
        args.batch, args.iters, args.warmup = 4, 10, 2
    models = {k: build(k, args.num_classes, args.device) for k in ("focal", "efl")}
    models["efl"].load_state_dict(models["focal"].state_dict(), strict=False)
    optims = {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in models.items()}
    data = random_batch(args.batch, args.image_size, args.num_classes, args.device)
    print(f"RetinaNet (configs/Synthetic, half-width R-18-FPN P3-P5), K={args.num_classes}, "
          f"batch {args.batch} x {args.image_size}px, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    times = {k: [] for k in models}
    for i in range(args.warmup + args.iters):
        for k in ("focal", "efl") if i % 2 == 0 else ("efl", "focal"):
            t = step(models[k], optims[k], data)
            if i >= args.warmup:
                times[k].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"stock RetinaNet (sigmoid_focal_loss_jit): {med['focal']:.3f} s/iter (median of {args.iters})")
    print(f"EFLRetinaNet (fused EFL):                 {med['efl']:.3f} s/iter (median of {args.iters})")
    print(f"EFLRetinaNet / RetinaNet time per iteration: {med['efl'] / med['focal']:.3f}")


if __name__ == "__main__":
    main()
