"""Timing and memory helpers shared by the benchmarks, the GPU check and the probe.

Times are wall-clock seconds around a device synchronisation; memory is bytes: on CUDA
``max_memory_allocated`` above what was allocated before, on CPU the peak of the running
sum of the allocator events that ``torch.profiler`` records.
"""

import math
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

__all__ = [
    "STRIDES", "sync", "timed", "median_time", "peak_memory", "anchor_layout",
    "make_loss_inputs",
]

STRIDES = (8, 16, 32, 64, 128)  # FPN P3-P7


def sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device) -> float:
    """Seconds of one call of ``fn``, synchronised before and after."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def median_time(fn: Callable[[], object], device, warmup: int, repeats: int) -> Tuple[float, float]:
    """(first call's seconds, median seconds of ``repeats`` calls after ``warmup`` calls,
    the first call included in the warm-up)."""
    first = timed(fn, device)
    for _ in range(max(0, warmup - 1)):
        timed(fn, device)
    return first, statistics.median(timed(fn, device) for _ in range(max(1, repeats)))


def peak_memory(fn: Callable[[], object], device) -> int:
    """Peak bytes allocated during one call of ``fn`` above the allocation before it."""
    device = torch.device(device)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def anchor_layout(
    image_size: Sequence[int], anchors_per_location: int, num_images: int = 1,
    size_divisibility: int = 32, strides: Sequence[int] = STRIDES,
) -> Tuple[int, str]:
    """(M, text): the anchors of ``num_images`` images of ``image_size`` (H, W) padded to
    ``size_divisibility`` on FPN levels of ``strides``, and the arithmetic as text."""
    d = size_divisibility
    h, w = (math.ceil(s / d) * d for s in image_size)
    # Stride-2 convs with padding 1 give ceil(x / 2): level sizes are ceil(size / stride).
    levels = [(s, math.ceil(h / s), math.ceil(w / s)) for s in strides]
    locations = sum(fh * fw for _, fh, fw in levels)
    per_image = locations * anchors_per_location
    m = per_image * num_images
    text = (
        f"images {image_size[0]}x{image_size[1]} padded to {h}x{w}; levels "
        + ", ".join(f"P{int(math.log2(s))} {fh}x{fw}" for s, fh, fw in levels)
        + f" = {locations} locations x {anchors_per_location} anchors = {per_image} "
        f"anchors/image x {num_images} images = M = {m} anchors"
    )
    return m, text


def make_loss_inputs(
    m: int, num_classes: int, device, dtype=torch.float32, positive_fraction: float = 0.0015,
    seed: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """(logits (M, K), float one-hot targets (M, K), number of positives): logits around
    RetinaNet's classifier prior (-4.6), ``positive_fraction`` of the rows positive, with
    long-tailed labels (class c drawn with probability ~ 1 / (c + 1))."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = (torch.randn(m, num_classes, generator=gen) * 1.5 - 4.6).to(device=device, dtype=dtype)
    num_pos = max(1, round(m * positive_fraction))
    rows = torch.randperm(m, generator=gen)[:num_pos]
    probs = 1.0 / torch.arange(1, num_classes + 1, dtype=torch.float64)
    labels = torch.multinomial(probs, num_pos, replacement=True, generator=gen)
    targets = torch.zeros(m, num_classes, dtype=dtype, device=device)
    targets[rows.to(device), labels.to(device)] = 1
    return logits, targets, float(num_pos)


def ratios_to(results: Dict[str, Dict[str, float]], baseline: str, keys: List[str]) -> Dict[str, Dict[str, float]]:
    """``results[name][key] / results[baseline][key]`` for every name and key."""
    base = results[baseline]
    return {name: {k: (r[k] / base[k] if base.get(k) else float("nan")) for k in keys}
            for name, r in results.items()}
