#!/usr/bin/env python
"""Benchmark the classification loss on LVIS-shaped inputs: forward + backward time and
peak memory of fvcore's ``sigmoid_focal_loss_jit`` (the baseline Detectron2 uses), the
readable EFL (``implementation="reference"``) and the fast EFL (``"fused"``, the default).

The logits are what a RetinaNet head produces for a batch: 9 anchors per location on FPN
levels P3-P7 (strides 8..128), images padded to a multiple of 32, K = 1203 classes; about
0.15% of the anchors are positives with one-hot targets (float, as focal-jit needs them;
so the EFL module checks their values, in its kernel). The EFL times include the
per-class statistics update (it happens in backward) and the module's input checks.

Bandwidth: the fast EFL's step is credited with the bytes it must move at the least
(read logits and targets once, write the gradient once) and compared with a memcpy
(dst.copy_(src), destination allocated before) of the same tensors, timed interleaved with
the fast EFL's steps. For scale, the same figure is printed for `logits + targets`, a
trivial op that moves exactly those bytes into a newly allocated tensor, as every
gradient is.

    python tools/benchmark_loss.py             # 2 images at 800x1333 (needs ~26 GB free)
    python tools/benchmark_loss.py --quick     # < 1 min smoke run, 1 image at 224x224
    python tools/benchmark_loss.py --num-images 1 --device cuda

The last line always holds the ratios to the baseline measured in the same run.
"""

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "EFL"))

from fvcore.nn import sigmoid_focal_loss_jit  # noqa: E402

from efl import EqualizedFocalLoss  # noqa: E402
from efl import kernels  # noqa: E402
from efl.bench.measure import anchor_layout, make_loss_inputs, peak_memory, sync, timed  # noqa: E402

BASELINE_PEAK_FACTOR = 14  # inputs (2) + measured focal-jit peak (11) + slack, in M*K tensors


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num-images", type=int, default=2, help="images per batch")
    p.add_argument("--image-size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    p.add_argument("--size-divisibility", type=int, default=32, help="images padded to this")
    p.add_argument("--anchors-per-location", type=int, default=9)
    p.add_argument("--num-classes", type=int, default=1203)
    p.add_argument("--positive-fraction", type=float, default=0.0015)
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="1 image at 224x224, 1 warm-up, 3 repeats (under a minute on 2 cores)")
    p.add_argument("--force", action="store_true", help="run even if memory looks too small")
    args = p.parse_args()
    if args.quick:
        args.num_images, args.image_size, args.warmup, args.repeats = 1, (224, 224), 1, 3
    return args


def anchor_count(args):
    """Anchors of the batch and the arithmetic behind it, as text."""
    m, text = anchor_layout(args.image_size, args.anchors_per_location, args.num_images,
                            args.size_divisibility)
    return m, text + f"; M x K = {m} x {args.num_classes} = {m * args.num_classes:,} logits"


def make_inputs(args, m, device, dtype):
    return make_loss_inputs(m, args.num_classes, device, dtype, args.positive_fraction, args.seed)


def one_step(fn, z, targets, normalizer, device):
    z.grad = None
    t = time.perf_counter()
    fn(z, targets, normalizer).backward()
    sync(device)
    return time.perf_counter() - t


def step_peak_memory(fn, z, targets, normalizer, device):
    """Peak bytes allocated above what existed before one forward + backward (inputs not
    counted; the gradient written into z.grad is)."""
    z.grad = None
    peak = peak_memory(lambda: fn(z, targets, normalizer).backward(), device)
    z.grad = None
    return peak


def bandwidth_run(fast, z, logits, targets, normalizer, device, repeats):
    """Median times of: one fast-EFL step, a memcpy of logits and targets into buffers
    allocated beforehand, and `logits + targets` into a new tensor; interleaved, so that
    load from other processes hits all three alike."""
    dsts = [torch.empty_like(logits), torch.empty_like(targets)]

    def memcpy():
        dsts[0].copy_(logits)
        dsts[1].copy_(targets)

    def add():
        return logits + targets

    memcpy()  # the first copy also faults the destination pages in
    times = {"fast": [], "memcpy": [], "add": []}
    for _ in range(repeats):
        times["fast"].append(one_step(fast, z, targets, normalizer, device))
        times["memcpy"].append(timed(memcpy, device))
        times["add"].append(timed(add, device))
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    args = parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    m, arithmetic = anchor_count(args)
    k = args.num_classes
    tensor_bytes = m * k * dtype.itemsize
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"dtype {args.dtype}, kernels backend {kernels.get_backend()}")
    print(arithmetic)
    need = BASELINE_PEAK_FACTOR * tensor_bytes
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        free = info.get("MemAvailable", need)
    if need > 0.9 * free and not args.force:
        sys.exit(
            f"The baseline needs about {need / 2**30:.1f} GiB ({BASELINE_PEAK_FACTOR} tensors "
            f"of {tensor_bytes / 2**30:.2f} GiB) but {free / 2**30:.1f} GiB are available; "
            "use fewer images (--num-images), a smaller --image-size, --quick, or --force."
        )

    logits, targets, normalizer = make_inputs(args, m, device, dtype)
    num_pos = int(normalizer)
    print(f"positives: {num_pos} ({num_pos / m:.3%} of anchors, one-hot, long-tailed classes); "
          f"normalizer = {num_pos}; one (M, K) {args.dtype} tensor = "
          f"{tensor_bytes / 2**20:.0f} MiB")

    state_gen = torch.Generator().manual_seed(args.seed + 1)
    state = torch.rand(k, generator=state_gen)  # mid-training: g_j in [0, 1]
    efl_ref = EqualizedFocalLoss(k, implementation="reference").to(device)
    efl_fast = EqualizedFocalLoss(k).to(device)
    for efl in (efl_ref, efl_fast):
        efl.pos_neg.copy_(state)
        efl.train()

    def focal(z, y, n):
        return sigmoid_focal_loss_jit(z, y, alpha=0.25, gamma=2.0, reduction="sum") / n

    methods = [
        ("focal_jit", "fvcore sigmoid_focal_loss_jit (baseline)", focal),
        ("reference", "EFL implementation='reference'", efl_ref),
        ("fast", "EFL implementation='fused'", efl_fast),
    ]
    z = logits.clone().requires_grad_(True)
    results = {}
    for key, label, fn in methods:
        first = one_step(fn, z, targets, normalizer, device)  # includes compiling for "fast"
        for _ in range(max(0, args.warmup - 1)):
            one_step(fn, z, targets, normalizer, device)
        times = [one_step(fn, z, targets, normalizer, device) for _ in range(args.repeats)]
        peak = step_peak_memory(fn, z, targets, normalizer, device)
        results[key] = dict(first=first, median=statistics.median(times), peak=peak)
        print(f"{label:42s} fwd+bwd median {statistics.median(times):8.4f} s "
              f"(min {min(times):.4f}, first call {first:.3f} s); peak {peak / 2**20:9.1f} MiB "
              f"= {peak / tensor_bytes:5.2f} x one (M, K) tensor")
    compile_s = results["fast"]["first"] - results["fast"]["median"]
    print(f"fast EFL first call: {results['fast']['first']:.2f} s, i.e. ~{compile_s:.2f} s of "
          "tracing/compiling (once per process, dtype and device; Inductor's on-disk cache "
          "shortens it on later runs)")

    # Where the fast EFL's time goes: the module's input checks, the forward kernel, the
    # backward's scaling of the kept gradient.
    gamma = efl_fast.gamma.to(torch.promote_types(dtype, torch.float32))
    scale = torch.ones((), dtype=gamma.dtype, device=device) / normalizer
    kept = kernels.efl_forward_with_grad(logits, targets, gamma, gamma / 2.0, 0.25, True)[1]
    parts = {
        "the module's input checks (types, shapes; target values are checked in the kernel)":
            lambda: efl_fast._check_inputs(logits, targets, normalizer, check_values=False),
        "forward kernel (loss, gradient, per-class sums, target check)":
            lambda: kernels.efl_forward_with_grad(logits, targets, gamma, gamma / 2.0, 0.25, True),
        "backward (kept gradient x upstream gradient, in place)":
            lambda: kept.mul_(scale),
    }
    for label, fn in parts.items():
        fn()
        times = [timed(fn, device) for _ in range(args.repeats)]
        print(f"  fast EFL part: {label}: median {statistics.median(times):.4f} s")
    del kept

    t = bandwidth_run(efl_fast, z, logits, targets, normalizer, device, args.repeats)
    memcpy_bytes = 2 * (logits.nbytes + targets.nbytes)  # read + write of both
    bandwidth = memcpy_bytes / t["memcpy"]
    counted = logits.nbytes + targets.nbytes + z.nbytes  # read both once, write the gradient
    achieved = counted / t["fast"]
    add_achieved = counted / t["add"]  # reads logits and targets, writes a new (M, K) tensor
    print(f"bandwidth, timed interleaved ({args.repeats} rounds, medians): memcpy "
          f"(dst.copy_(src) of logits and targets, dst allocated before, read + write "
          f"counted: {memcpy_bytes / 1e9:.3f} GB) {t['memcpy']:.4f} s = "
          f"{bandwidth / 1e9:.2f} GB/s")
    print(f"fast EFL step {t['fast']:.4f} s, credited with one read of logits and targets "
          f"and one write of the gradient ({counted / 1e9:.3f} GB): {achieved / 1e9:.2f} GB/s "
          f"= {achieved / bandwidth:.1%} of memcpy (it also reads the gradient back for the "
          "per-class sums, and backward reads and writes it once more to scale it)")
    print(f"for scale: logits + targets into a new tensor (same bytes) {t['add']:.4f} s: "
          f"{add_achieved / 1e9:.2f} GB/s = {add_achieved / bandwidth:.1%} of memcpy "
          "(the cost of writing into newly allocated memory)")
    print("memory: " + (
        "torch.cuda.max_memory_allocated above the allocation before the step"
        if device.type == "cuda" else
        "CPU allocator events from torch.profiler(profile_memory=True), peak of the running "
        "sum over one step"
    ) + "; the inputs are not counted, the gradient is")

    base = results["focal_jit"]
    r = {key: (results[key]["median"] / base["median"], results[key]["peak"] / base["peak"])
         for key in ("reference", "fast")}
    print(
        f"RATIOS vs focal_jit (same run): fast time {r['fast'][0]:.3f} mem {r['fast'][1]:.3f} | "
        f"reference time {r['reference'][0]:.3f} mem {r['reference'][1]:.3f} | "
        f"fast bandwidth {achieved / bandwidth:.3f} of memcpy (logits + targets into a new "
        f"tensor: {add_achieved / bandwidth:.3f})"
    )


if __name__ == "__main__":
    main()
