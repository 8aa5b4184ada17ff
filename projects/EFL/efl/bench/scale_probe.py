"""EFL vs focal loss at LVIS-like imbalance on one GPU (``tools/scale_probe.py``).

Two RetinaNets, identical but the classification loss (Detectron2's focal loss vs
EqualizedFocalLoss), same initial weights (seed), trained on the same images in the same
order from :class:`efl.data.procedural.ProceduralStream`, then evaluated on its fixed
class-balanced validation set with the LVIS evaluator.

The model: Detectron2's RetinaNet (configs/common/models/retinanet.py: P3-P7, 9 anchors
per location) on a ResNet-18 trunk with BatchNorm, from scratch, a 128-channel FPN and two
convs per head tower (sized for the time budget). Training: SGD 0.9, weight decay 1e-4,
LR ``lr`` with linear warm-up and x0.1 at 80% and 93% of the iterations, gradient clipping
at L2 35; bfloat16 autocast on CUDA (no gradient scaler needed), float32 on CPU.
"""

import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Dict

import numpy as np
import torch

from ..data.procedural import ProceduralStream, StreamDesign
from ..errors import TrainingDiverged
from ..groups import group_means
from ..io import write_json_atomic
from ..losses import statistics_losses
from .detectors import load_model_config, set_loss
from .measure import anchor_layout

__all__ = ["ProbeConfig", "GPU_PROBE", "TINY_PROBE", "run_probe", "format_report",
           "ASSUMED_ITERS_PER_S"]

ASSUMED_ITERS_PER_S = 7.0  # one H200, batch 16 at 512 px, bf16: an estimate, not measured
LVIS_REFERENCE = dict(anchors_per_image=4e4, rare_image_frequency=1e-4)  # issue 14's figures
DEMO_REFERENCE = dict(anchors_per_image=1e3, rare_image_frequency=5e-3)  # the CPU demo


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    design: StreamDesign = StreamDesign()
    iterations: int = 1000
    batch_size: int = 16
    lr: float = 0.02
    seed: int = 0
    trunk_depth: int = 18
    fpn_channels: int = 128
    head_convs: int = 2
    eval_batch: int = 8


GPU_PROBE = ProbeConfig()
TINY_PROBE = ProbeConfig(
    # Toy sizes for a CPU smoke run; denser bands so that a few images hold objects.
    design=StreamDesign(num_classes=30, image_size=128, min_box=24, max_box=64,
                        bands=((0.05, 0.1), (0.1, 0.3), (0.3, 0.6)), val_images_per_class=1),
    iterations=2, batch_size=2, fpn_channels=32, head_convs=1, eval_batch=4)


def build_probe_model(cfg: ProbeConfig, loss: str, class_groups, device):
    from detectron2.config import instantiate

    model = load_model_config("retinanet")
    model.num_classes = cfg.design.num_classes
    trunk = model.backbone.bottom_up
    trunk.stem.norm = "BN"
    trunk.stages.depth = cfg.trunk_depth
    trunk.stages.norm = "BN"
    if cfg.trunk_depth < 50:
        trunk.stages.pop("stride_in_1x1")  # BasicBlock has none
        model.backbone.top_block.in_channels = 512
    trunk.freeze_at = 0
    model.backbone.out_channels = cfg.fpn_channels
    model.head.input_shape = [{"channels": cfg.fpn_channels}] * 5
    model.head.conv_dims = [cfg.fpn_channels] * cfg.head_convs
    model.pixel_std = [57.375, 57.120, 58.395]  # from scratch: normalise the input
    model.test_score_thresh = 1e-4
    model.test_topk_candidates = 1000
    model.max_detections_per_image = 300
    set_loss(model, loss, class_groups)
    torch.manual_seed(cfg.seed)
    return instantiate(model).to(device)


def _lr_factor(it: int, n: int) -> float:
    warmup = max(1, n // 10)
    if it < warmup:
        return 0.001 + (1 - 0.001) * it / warmup
    return 1.0 if it < 0.8 * n else (0.1 if it < 0.93 * n else 0.01)


def train(model, stream: ProceduralStream, cfg: ProbeConfig, device, log=print) -> Dict:
    """``cfg.iterations`` SGD steps on the stream; seconds per iteration and, for an EFL
    model, the positive / total anchor-class entries the loss saw per class."""
    from detectron2.utils.events import EventStorage

    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=1e-4)
    counts = dict(pos=torch.zeros(cfg.design.num_classes, dtype=torch.float64), rows=0,
                  images=np.zeros(cfg.design.num_classes, dtype=np.int64))
    hook = None
    losses = statistics_losses(model)
    if losses:
        def count(_module, args):
            counts["pos"] += args[1].sum(0).double().cpu()
            counts["rows"] += args[1].shape[0]
        hook = losses[0][1].register_forward_pre_hook(count)
    amp = device.type == "cuda"
    model.train()
    times = []
    with EventStorage(0) as storage:
        for it in range(cfg.iterations):
            storage.iter = it
            t = time.perf_counter()
            data = stream.batch(it, cfg.batch_size)
            for x in data:
                counts["images"][np.unique(x["instances"].gt_classes.cpu().numpy())] += 1
            for group in opt.param_groups:
                group["lr"] = cfg.lr * _lr_factor(it, cfg.iterations)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                losses = model(data)
            total = sum(losses.values())
            if not torch.isfinite(total.detach()):
                raise TrainingDiverged(f"the probe's loss is {float(total)} at iteration {it}")
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
            if it % max(1, cfg.iterations // 10) == 0 or it == cfg.iterations - 1:
                log(f"  iter {it}/{cfg.iterations}: loss {float(total.detach()):.4f} "
                    f"({', '.join(f'{k} {float(v.detach()):.3f}' for k, v in losses.items())}), "
                    f"{times[-1]:.3f} s/iter")
    if hook is not None:
        hook.remove()
    steady = times[len(times) // 5:] or times
    return dict(seconds=sum(times), s_per_iter=statistics.median(steady), counts=counts)


class _ValLoader:
    """The validation inputs in batches, drawn as they are read."""

    def __init__(self, stream, batch):
        self.stream, self.batch = stream, batch
        self.layouts = stream.val_layouts()

    def __len__(self):
        return math.ceil(len(self.layouts) / self.batch)

    def __iter__(self):
        s = self.stream.design.image_size
        for i in range(0, len(self.layouts), self.batch):
            yield [{"image": self.stream.draw(objs, 10**9 + j), "image_id": j + 1,
                    "height": s, "width": s}
                   for j, objs in enumerate(self.layouts[i:i + self.batch], start=i)]


def evaluate(model, stream: ProceduralStream, json_path: str, batch: int) -> Dict[str, float]:
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import inference_on_dataset

    from ..evaluation import LVISEvaluator

    name = f"efl_scale_probe_val_{os.getpid()}_{abs(hash(json_path))}"
    if name not in MetadataCatalog.list():
        MetadataCatalog.get(name).set(json_file=json_path, evaluator_type="lvis")
    evaluator = LVISEvaluator(name, tasks=("bbox",), distributed=False, output_dir=None,
                              max_dets_per_image=300)
    with contextlib.redirect_stdout(sys.stderr):  # lvis-api prints its summary: keep stdout the table
        results = inference_on_dataset(model, _ValLoader(stream, batch), evaluator)
    return {k: float(v) for k, v in results["bbox"].items()}


def design_numbers(cfg: ProbeConfig) -> Dict:
    d = cfg.design
    freq, groups = d.frequencies(), np.array(d.groups())
    anchors, text = anchor_layout((d.image_size, d.image_size), 9)
    rare = freq[groups == "r"]
    images = cfg.iterations * cfg.batch_size
    return dict(
        classes={x: int((groups == x).sum()) for x in "rcf"},
        bands={x: list(b) for x, b in zip("rcf", d.bands)},
        objects_per_image=float(freq.sum()), anchors_per_image=anchors, anchors_text=text,
        training_images=images,
        expected_rare_images=[float(rare.min() * images), float(rare.max() * images)],
        expected_negatives_per_rare_positive=[anchors / float(rare.max()), anchors / float(rare.min())],
        lvis_negatives_per_rare_positive=LVIS_REFERENCE["anchors_per_image"] / LVIS_REFERENCE["rare_image_frequency"],
        demo_negatives_per_rare_positive=DEMO_REFERENCE["anchors_per_image"] / DEMO_REFERENCE["rare_image_frequency"],
        assumed_iters_per_s=ASSUMED_ITERS_PER_S,
        assumed_minutes_both=2 * cfg.iterations / ASSUMED_ITERS_PER_S / 60,
    )


def run_probe(cfg: ProbeConfig, device_name: str, out: str = None, log=print) -> Dict:
    from .gpu_check import check_device

    device = check_device(device_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
    stream = ProceduralStream(cfg.design, cfg.seed, device)
    groups = stream.group
    result = dict(config=dataclasses.asdict(cfg), design=design_numbers(cfg), device=str(device),
                  models={})
    log(f"probe design: {json.dumps({k: v for k, v in result['design'].items() if k != 'anchors_text'})}")
    with tempfile.TemporaryDirectory(prefix="efl_probe_") as tmp:
        json_path = stream.write_lvis_json(os.path.join(tmp, "val_lvis.json"))
        for loss in ("focal", "efl"):
            log(f"{loss}: training {cfg.iterations} iterations x {cfg.batch_size} images")
            model = build_probe_model(cfg, loss, groups, device)
            trained = train(model, stream, cfg, device, log)
            t = time.perf_counter()
            metrics = evaluate(model, stream, json_path, cfg.eval_batch)
            row = dict(metrics=metrics, train_seconds=trained["seconds"],
                       s_per_iter=trained["s_per_iter"], eval_seconds=time.perf_counter() - t)
            counts = trained["counts"]
            rare = np.array(groups) == "r"
            row["rare_training_images"] = [int(counts["images"][rare].min()),
                                           float(np.median(counts["images"][rare])),
                                           int(counts["images"][rare].max())]
            if loss == "efl":
                efl = statistics_losses(model)[0][1]
                row["mean_g"] = group_means(efl.pos_neg, groups)
                row["mean_gamma"] = group_means(efl.gamma, groups)
                pos = counts["pos"][torch.from_numpy(rare)]
                row["rare_positive_entries"] = float(pos.sum())
                row["rare_negatives_per_positive"] = (
                    float((counts["rows"] * len(pos) - pos.sum()) / pos.sum()) if pos.sum() > 0
                    else float("inf"))
            result["models"][loss] = row
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if out:
        write_json_atomic(out, result, indent=1)
    return result


def format_report(result: Dict) -> str:
    d = result["design"]
    lines = [
        f"scale probe on {result['device']}: {d['classes']} classes (r/c/f), image "
        f"frequency bands {d['bands']}, {d['objects_per_image']:.2f} objects/image",
        f"anchors: {d['anchors_text']}",
        f"training: {d['training_images']} images; expected rare-class images "
        f"{d['expected_rare_images'][0]:.1f}..{d['expected_rare_images'][1]:.1f}",
        f"negatives per rare positive, anchors/image / rare image frequency: probe "
        f"{d['expected_negatives_per_rare_positive'][0]:.1e}..{d['expected_negatives_per_rare_positive'][1]:.1e}, "
        f"LVIS {d['lvis_negatives_per_rare_positive']:.0e}, CPU demo {d['demo_negatives_per_rare_positive']:.0e}",
        "",
        f"{'model':8s} {'AP':>6s} {'APr':>6s} {'APc':>6s} {'APf':>6s}  {'g r/c/f':>20s}  "
        f"{'s/iter':>7s} {'train s':>8s}  rare images seen (min/median/max)",
    ]
    for loss, row in result["models"].items():
        m = row["metrics"]
        g = row.get("mean_g")
        g_text = "/".join(f"{g[x]:.3f}" for x in "rcf" if x in g) if g else "-"
        imgs = row["rare_training_images"]
        lines.append(
            f"{loss:8s} {m.get('AP', float('nan')):6.2f} {m.get('APr', float('nan')):6.2f} "
            f"{m.get('APc', float('nan')):6.2f} {m.get('APf', float('nan')):6.2f}  {g_text:>20s}  "
            f"{row['s_per_iter']:7.3f} {row['train_seconds']:8.1f}  {imgs[0]}/{imgs[1]:g}/{imgs[2]}")
    efl = result["models"].get("efl", {})
    if "rare_negatives_per_positive" in efl:
        lines.append(f"rare group, measured: {efl['rare_positive_entries']:.0f} positive anchor-class "
                     f"entries, {efl['rare_negatives_per_positive']:.2e} negative entries per positive")
    its = [r["s_per_iter"] for r in result["models"].values()]
    lines.append(f"defaults assume {d['assumed_iters_per_s']:g} it/s ({d['assumed_minutes_both']:.1f} min "
                 f"of training for both); measured here {1 / statistics.mean(its):.2f} it/s")
    return "\n".join(lines)
