"""The one-command GPU check (``tools/gpu_check.py``): loss speed and memory, training
speed and memory, and EFL under AMP, as one table and one JSON file.

Sizes (``GPU_SIZES``, or ``TINY_SIZES`` for ``--tiny``): 800x1333 images, K = 1203; the
loss on the classification logits of 1 and 2 images for the anchors of the improved
detector (2 per location) and of RetinaNet (9), in float32 and under autocast (bfloat16,
float16); training steps of 2 images. Times are medians in seconds after warm-up, memory
peaks in bytes (see ``efl.bench.measure``); every ratio is to a baseline measured in the
same run.
"""

import dataclasses
import platform
import time
from typing import List, Optional

import torch

from ..errors import InputError
from ..io import write_json_atomic
from .amp_check import amp_check
from .detectors import ANCHORS_PER_LOCATION, build_detector, random_batch, train_step
from .measure import anchor_layout, make_loss_inputs, median_time, peak_memory

__all__ = ["CheckSizes", "GPU_SIZES", "TINY_SIZES", "run_gpu_check", "format_table"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class CheckSizes:
    image_size: tuple = (800, 1333)      # (H, W) pixels
    num_classes: int = 1203              # K
    loss_images: tuple = (1, 2)
    train_images: int = 2
    warmup: int = 3                      # calls before timing (the first one compiles)
    repeats: int = 5                     # timed calls; the median is reported
    tiny_models: bool = False            # ResNet-18, 32-channel detectors


GPU_SIZES = CheckSizes()
TINY_SIZES = CheckSizes(image_size=(64, 64), num_classes=12, loss_images=(1, 2),
                        train_images=2, warmup=1, repeats=1, tiny_models=True)


def check_device(name: str) -> torch.device:
    """The device, or an InputError saying why it cannot be used."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise InputError(f"--device {name!r} is not a device name ({e}); use cuda, cuda:N or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"--device {name} asked for but torch {torch.__version__} sees no CUDA device "
            f"(torch.version.cuda={torch.version.cuda}); check nvidia-smi and that the venv "
            "has a CUDA build of torch, or run the toy version with --device cpu --tiny"
        )
    return device


def _focal_jit(z, y, n):
    from fvcore.nn import sigmoid_focal_loss_jit

    return sigmoid_focal_loss_jit(z, y, alpha=0.25, gamma=2.0, reduction="sum") / n


def loss_part(sizes: CheckSizes, device, log=print) -> List[dict]:
    """One row per (anchors, images, precision, method): median fwd+bwd seconds, peak
    bytes, their ratios to focal-jit of the same inputs, the first call's seconds."""
    from .. import EqualizedFocalLoss

    k = sizes.num_classes
    state = torch.rand(k, generator=torch.Generator().manual_seed(1))  # mid-training g
    methods = {"focal_jit": _focal_jit,
               "reference": EqualizedFocalLoss(k, implementation="reference").to(device),
               "fused": EqualizedFocalLoss(k).to(device)}
    for m in ("reference", "fused"):
        methods[m].pos_neg.copy_(state)
    rows = []
    for arch, per_location in ANCHORS_PER_LOCATION.items():
        for images in sizes.loss_images:
            m, text = anchor_layout(sizes.image_size, per_location, images)
            log(f"loss inputs ({arch}): {text}; x K = {m * k:,} logits")
            logits32, targets32, n = make_loss_inputs(m, k, device)
            for precision, dtype in PRECISIONS.items():
                z = logits32.to(dtype or torch.float32).requires_grad_(True)
                y = targets32.to(z.dtype)
                for method, fn in methods.items():
                    row = dict(part="loss", anchors=arch, images=images, precision=precision,
                               method=method, logits=m * k)
                    rows.append(row)

                    def step():
                        z.grad = None
                        with torch.autocast(device.type, dtype=dtype or torch.float32,
                                            enabled=dtype is not None):
                            loss = fn(z, y, n)
                        loss.backward()

                    try:
                        row["first_s"], row["median_s"] = median_time(
                            step, device, sizes.warmup, sizes.repeats)
                        row["peak_bytes"] = peak_memory(step, device)
                    except (RuntimeError, TypeError, NotImplementedError) as e:
                        row["error"] = " ".join(str(e).split())[:200]
                    z.grad = None
                base = rows[-len(methods)]
                for row in rows[-len(methods):]:
                    if "error" not in row and "error" not in base:
                        row["time_ratio"] = row["median_s"] / base["median_s"]
                        row["mem_ratio"] = row["peak_bytes"] / max(base["peak_bytes"], 1)
                del z, y
            del logits32, targets32
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def train_part(sizes: CheckSizes, device, log=print) -> List[dict]:
    """One row per (detector, loss, AMP): median seconds per SGD step and peak bytes of
    one step, on one fixed random batch, after warm-up; ratio to the focal twin."""
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    data = random_batch(sizes.train_images, sizes.image_size, sizes.num_classes, device)
    rows = []
    for arch in ("retinanet", "improved"):
        for loss in ("focal", "efl"):
            model = build_detector(arch, loss, sizes.num_classes, device, tiny=sizes.tiny_models)
            for amp in (False, True):
                opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
                scaler = (torch.amp.GradScaler(device.type)
                          if amp and amp_dtype == torch.float16 else None)
                row = dict(part="train", arch=arch, loss=loss,
                           amp=(str(amp_dtype).split(".")[-1] if amp else "off"),
                           images=sizes.train_images)

                def step():
                    train_step(model, opt, data, amp_dtype if amp else None, scaler)

                try:
                    _, row["median_s"] = median_time(step, device, sizes.warmup, sizes.repeats)
                    row["peak_bytes"] = peak_memory(step, device)
                except (RuntimeError, TypeError, NotImplementedError) as e:
                    row["error"] = " ".join(str(e).split())[:200]
                rows.append(row)
                log(f"train {arch} {loss} amp={row['amp']}: "
                    + (f"{row['median_s']:.3f} s/iter" if "median_s" in row else row["error"]))
            del model, opt
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for row in rows:
        base = next(r for r in rows if r["arch"] == row["arch"] and r["amp"] == row["amp"]
                    and r["loss"] == "focal")
        if "median_s" in row and "median_s" in base:
            row["time_ratio"] = row["median_s"] / base["median_s"]
            row["mem_ratio"] = row["peak_bytes"] / max(base["peak_bytes"], 1)
    return rows


def environment(device) -> dict:
    env = dict(torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
               device=str(device), threads=torch.get_num_threads())
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    try:
        import detectron2

        env["detectron2"] = detectron2.__version__
    except ImportError:  # pragma: no cover
        pass
    from .. import kernels

    env["efl_kernels_backend"] = kernels.get_backend()
    return env


def run_gpu_check(device_name: str, tiny: bool = False, parts=("loss", "train", "amp"),
                  out: Optional[str] = None, log=print) -> dict:
    """Run the parts, write the JSON (``out``) and return it: environment, sizes, rows."""
    device = check_device(device_name)
    unknown = sorted(set(parts) - {"loss", "train", "amp"})
    if unknown:
        raise InputError(f"unknown parts {unknown}; choose from loss, train, amp")
    sizes = TINY_SIZES if tiny else GPU_SIZES
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False  # same kernels for both twins
    result = dict(environment=environment(device), sizes=dataclasses.asdict(sizes), parts={},
                  seconds={})
    for part, fn in (("loss", loss_part), ("train", train_part), ("amp", amp_check)):
        if part in parts:
            t = time.perf_counter()
            result["parts"][part] = fn(sizes, device, log=log)
            result["seconds"][part] = time.perf_counter() - t
    if out:
        write_json_atomic(out, result, indent=1)
    return result


def _mib(b):
    return f"{b / 2**20:.1f}"


def format_table(result: dict) -> str:
    """The whole check as one plain-text table (one line per measurement)."""
    env = result["environment"]
    lines = [f"GPU check: {env.get('gpu', env['device'])}, torch {env['torch']} "
             f"(CUDA {env['cuda']}), detectron2 {env.get('detectron2')}, "
             f"sizes {result['sizes']['image_size']} K={result['sizes']['num_classes']}"]
    header = f"{'part':6s} {'what':44s} {'median s':>10s} {'peak MiB':>10s} {'time/base':>9s} {'mem/base':>9s}  note"
    lines += [header, "-" * len(header)]
    compile_noted = set()
    for row in result["parts"].get("loss", []):
        what = f"{row['anchors']} x{row['images']} {row['precision']} {row['method']}"
        note = "baseline" if row["method"] == "focal_jit" else ""
        if row["method"] == "fused" and row["precision"] not in compile_noted and "first_s" in row:
            compile_noted.add(row["precision"])
            note = f"first call {row['first_s']:.2f} s (compile)"
        lines.append(_line("loss", what, row, note))
    for row in result["parts"].get("train", []):
        what = f"{row['arch']} {row['loss']} amp={row['amp']} ({row['images']} images)"
        lines.append(_line("train", what, row, "baseline" if row["loss"] == "focal" else ""))
    for row in result["parts"].get("amp", []):
        status = "PASS" if row["passed"] else "FAIL"
        lines.append(f"{'amp':6s} {row['check']:44s} {status:>10s}  {row['detail']}")
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in result["seconds"].items())
    lines.append(f"wall time: {seconds}")
    return "\n".join(lines)


def _line(part, what, row, note):
    if "error" in row:
        return f"{part:6s} {what:44s} {'error':>10s}  {row['error']}"
    tr = f"{row['time_ratio']:.3f}" if "time_ratio" in row else "-"
    mr = f"{row['mem_ratio']:.3f}" if "mem_ratio" in row else "-"
    return (f"{part:6s} {what:44s} {row['median_s']:10.4f} {_mib(row['peak_bytes']):>10s} "
            f"{tr:>9s} {mr:>9s}  {note}")
