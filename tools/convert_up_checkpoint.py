#!/usr/bin/env python
"""Convert a checkpoint of the EFL authors' detectors (United-Perception: their improved
detector, efl_improved_baseline_r50.pth / _r101.pth, or their YOLOX-IP, efl_yolox_small.pth,
eqfl_yolox_medium.pth, ...) into a Detectron2 checkpoint of ATSSRetinaNet / YOLOXIP:

    python tools/convert_up_checkpoint.py --input efl_improved_baseline_r50.pth --output r50.pth
    python tools/convert_up_checkpoint.py --config-file configs/LVISv1/efl_yolox_ip_s_300e.py \
        --input efl_yolox_small.pth --output yolox_s.pth
    python train_net.py --config-file configs/LVISv1/efl_improved_R_50_FPN_24ep.py \
        --eval-only train.init_checkpoint=r50.pth

The input may be their saver's file ({'model': ..., 'ema': {'ema_state_dict': ...}, ...}),
{'state_dict': ...} or a bare state dict, with or without 'module.'; from a file holding
both the trained weights and their EMA, the EMA is converted (the copy their evaluation
uses; --copy model for the other), and said. It is checked against the model of
--config-file (default for the improved detector: the EFL config of the checkpoint's depth;
required for YOLOX-IP; key=value overrides after the options): every tensor is used or named
as dropped, every model tensor filled, shapes equal. Bad input: one paragraph naming the
config, exit status 2, no output written.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIGS = {50: "configs/LVISv1/efl_improved_R_50_FPN_24ep.py",
                   101: "configs/LVISv1/efl_improved_R_101_FPN_24ep.py"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, metavar="UP.pth", help="the authors' checkpoint")
    p.add_argument("--output", required=True, metavar="OUT.pth", help="where to write ours")
    p.add_argument("--config-file", metavar="FILE",
                   help="the LazyConfig whose model receives the weights (default: "
                        "configs/LVISv1/efl_improved_R_{50,101}_FPN_24ep.py by depth)")
    p.add_argument("--copy", default="ema", choices=["ema", "model"],
                   help="from a file holding both: their EMA weights (default; what their "
                        "evaluation uses) or the trained ones")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read a file holding Python objects besides tensors (only for files "
                        "you trust; torch.load weights_only=False)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="key=value",
                   help="config overrides, e.g. model.num_classes=80")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from detectron2.config import LazyConfig, instantiate

    from efl.io import atomic_write
    from efl.convert import (convert_up, convert_up_yolox, describe_up_yolox, looks_like_up_yolox,
                             read_checkpoint_file, up_weights)
    from efl.convert.resnet import source_layout
    from efl.engine.config_checks import apply_overrides
    from efl.errors import ConfigError, InputError, report_input_error
    from efl.modeling import YOLOXIP

    import torch

    try:
        state, notes = up_weights(read_checkpoint_file(args.input, args.allow_pickle), args.input,
                                  args.copy)
        config = args.config_file
        if config is None and looks_like_up_yolox(state):
            raise ConfigError(
                f"{args.input} is a checkpoint of the authors' YOLOX-IP, "
                f"{describe_up_yolox(state)}: give --config-file the config of its size and "
                "loss (configs/LVISv1/{efl,eqfl}_yolox_ip_{s,m}_300e.py).")
        if config is None:
            layout = source_layout([k[len("backbone."):] for k in state if k.startswith("backbone.")])
            depth = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101}.get(layout[0], 50)
            config = os.path.join(ROOT, DEFAULT_CONFIGS[depth])
        if not os.path.isfile(config):
            raise ConfigError(f"--config-file {config} not found.")
        try:
            cfg = LazyConfig.load(config)  # the model only, built on the CPU: no device check
        except InputError as e:
            raise ConfigError(f"--config-file {config}: {e}") from None
        apply_overrides(cfg, args.opts)
        if "class_groups" in (cfg.model.get("cls_loss") or {}):
            cfg.model.cls_loss.class_groups = None  # statistics only; needs no dataset
        model = instantiate(cfg.model)
        convert = convert_up_yolox if isinstance(model, YOLOXIP) else convert_up
        converted, more = convert(state, model, args.input, config)
        notes += more
    except InputError as e:
        return report_input_error(e)
    out = {"model": converted, "__author__": "United-Perception (tools/convert_up_checkpoint.py)",
           "matching_heuristics": False}
    atomic_write(args.output, lambda f: torch.save(out, f))
    print(f"{args.input} -> {args.output}: {len(converted)} tensors for the model of {config}")
    for note in notes:
        print(f"  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
