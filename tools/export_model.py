#!/usr/bin/env python
"""Export a trained detector to TorchScript or ONNX, end to end: the file takes one image
and returns its final detections (contract in docs/deploy.md).

    python tools/export_model.py --config-file configs/Synthetic/retinanet_efl.py \\
        --format onnx --output deploy/ \\
        train.init_checkpoint=output/demo/retinanet_efl/model_final.pth

Writes DIR/model.ts (--format torchscript) or DIR/model.onnx (--format onnx), then runs
the written file on the sample image (--sample-image, read in the model's input format;
default: a random 256x256 image) and compares its detections with the eager model's. Bad
input (format, config, a model part that cannot be exported, missing or unfitting
weights) stops with one paragraph and exit status 2, leaving nothing in DIR.
"""

import argparse
import logging
import os
import sys
import warnings


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="a LazyConfig (.py)")
    p.add_argument("--format", required=True, metavar="{torchscript,onnx}")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for model.ts / model.onnx")
    p.add_argument("--sample-image", metavar="PATH", help="image to trace with and check on")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="key=value",
                   help="config overrides, e.g. train.init_checkpoint=model_final.pth")
    return p.parse_args(argv)


def sample_image(path, input_format):
    """(3, H, W) float32 in the model's input format."""
    import numpy as np
    import torch
    from detectron2.data.detection_utils import read_image

    from efl.errors import ImageUnreadable

    if path is None:
        return torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(0)) * 255
    try:
        image = read_image(path, format=input_format)
    except Exception as e:
        raise ImageUnreadable(f"--sample-image {path}: cannot read it as an image ({e}). "
                              "Give an image file, or leave the option out.") from None
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[export] %(levelname)s %(message)s",
                        stream=sys.stderr)
    from efl.export import quiet_inference_logs

    with quiet_inference_logs():
        return _run(args)


def _run(args) -> int:
    from efl.engine import load_config
    from efl.errors import InputError, report_input_error
    from efl.export import (ExportError, build_inference_model, check_exportable, check_format,
                            compare_detections, eager, export_detector, load_exported)

    warnings.filterwarnings("ignore", category=UserWarning, module="torch")  # tracer warnings
    try:
        check_format(args.format)
        cfg = load_config(args.config_file, args.opts)
        model = build_inference_model(cfg)
        check_exportable(model)
        image = sample_image(args.sample_image, getattr(model, "input_format", "BGR"))
        path = export_detector(model, args.format, args.output, image)
        parity = compare_detections(eager(model)(image), load_exported(path)(image),
                                    max_detections=model.max_detections_per_image)
        if not parity.ok():
            os.remove(path)
            raise ExportError(f"The exported model does not reproduce the eager model's "
                              f"detections on the sample image ({parity}); nothing was kept.")
    except InputError as e:
        return report_input_error(e)
    print(f"Wrote {path} (input image float32 (3, H, W); outputs boxes, scores, classes). "
          f"Check on the sample image: {parity}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
