#!/usr/bin/env python
"""Convert a checkpoint of the EFL authors' detector (United-Perception, e.g. their released
efl_improved_baseline_r50.pth / _r101.pth) into a Detectron2 checkpoint of ATSSRetinaNet:

    python tools/convert_up_checkpoint.py --input efl_improved_baseline_r50.pth --output r50.pth
    python train_net.py --config-file configs/LVISv1/efl_improved_R_50_FPN_24ep.py \\
        --eval-only train.init_checkpoint=r50.pth

The input may be {'model': ...}, {'state_dict': ...} or a bare state dict, with or without
'module.'. It is checked against the model of --config-file (default: the improved EFL
config of the checkpoint's depth; key=value overrides after the options): every tensor is
used or named as dropped, every model tensor filled, shapes equal. Bad input: one paragraph,
exit status 2, no output written.
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
    from efl.convert import convert_up, read_checkpoint_file, up_state_dict
    from efl.convert.resnet import source_layout
    from efl.engine.config_checks import apply_overrides
    from efl.errors import ConfigError, InputError

    import torch

    try:
        state = up_state_dict(read_checkpoint_file(args.input, args.allow_pickle), args.input)
        config = args.config_file
        if config is None:
            layout = source_layout([k[len("backbone."):] for k in state if k.startswith("backbone.")])
            depth = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101}.get(layout[0], 50)
            config = os.path.join(ROOT, DEFAULT_CONFIGS[depth])
        if not os.path.isfile(config):
            raise ConfigError(f"--config-file {config} not found.")
        cfg = LazyConfig.load(config)  # the model only, built on the CPU: no device check
        apply_overrides(cfg, args.opts)
        if "class_groups" in (cfg.model.get("cls_loss") or {}):
            cfg.model.cls_loss.class_groups = None  # statistics only; needs no dataset
        model = instantiate(cfg.model)
        converted, notes = convert_up(state, model, args.input)
    except InputError as e:
        print(f"ERROR: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    out = {"model": converted, "__author__": "United-Perception (tools/convert_up_checkpoint.py)",
           "matching_heuristics": False}
    atomic_write(args.output, lambda f: torch.save(out, f))
    print(f"{args.input} -> {args.output}: {len(converted)} tensors for the model of {config}")
    for note in notes:
        print(f"  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
