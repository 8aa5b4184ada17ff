#!/usr/bin/env python
"""Convert torchvision's ImageNet ResNet weights into a Detectron2 weights file, for YAML
configs trained with Detectron2's own DefaultTrainer (its DetectionCheckpointer does not
read torchvision's names; LazyConfig runs here read torchvision's file directly):

    python tools/convert_torchvision_resnet.py --input resnet50-19c8e357.pth \\
        --output R-50-torchvision.pkl
    ... MODEL.WEIGHTS R-50-torchvision.pkl   (with MODEL.RESNETS.STRIDE_IN_1X1 False,
        INPUT.FORMAT RGB and ImageNet PIXEL_MEAN / PIXEL_STD: docs/authors-detector.md)

The output holds Detectron2's ResNet names (stem.conv1.*, res2.0.conv1.norm.*, ...) marked
for Detectron2's name-matching heuristics, which place them under the model's backbone
prefix; fc.* and num_batches_tracked are dropped. Bad input: one paragraph, exit status 2,
no output written.
"""

import argparse
import pickle
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, metavar="TV.pth",
                   help="torchvision's ResNet state dict, e.g. resnet50-19c8e357.pth")
    p.add_argument("--output", required=True, metavar="OUT.pkl", help="where to write it")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from efl.io import atomic_write
    from efl.convert import read_checkpoint_file, torchvision_to_detectron2_file
    from efl.errors import InputError, report_input_error

    try:
        out = torchvision_to_detectron2_file(read_checkpoint_file(args.input), args.input)
    except InputError as e:
        return report_input_error(e)
    atomic_write(args.output, lambda f: pickle.dump(out, f))
    print(f"{args.input} -> {args.output}: {len(out['model'])} tensors of {out['__author__']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
