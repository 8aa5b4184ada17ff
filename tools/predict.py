#!/usr/bin/env python
"""Run a trained detector on your images.

    python tools/predict.py --config-file configs/Synthetic/retinanet_efl.py \\
        --input photos/ 'more/*.jpg' one.png --output out/ \\
        train.init_checkpoint=output/demo/retinanet_efl/model_final.pth

Writes out/<image name>.png (detections with score >= --score-thresh drawn, with the
dataset's class names) and out/predictions.json (COCO results format, the dataset's
category ids, same threshold). Device: train.device. An unreadable image is reported by
name and skipped; the exit status is then 1. Bad input (config, weights that do not fit
the config, no images) stops with one paragraph and exit status 2.
"""

import argparse
import logging
import os
import re
import sys
import warnings

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="a LazyConfig (.py)")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="image files, folders of images, or glob patterns")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the results")
    p.add_argument("--score-thresh", type=float, default=0.3,
                   help="smallest score drawn and written (default 0.3)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="key=value",
                   help="config overrides, e.g. train.init_checkpoint=model_final.pth")
    args = p.parse_args(argv)
    # key=value after --input is an override, unless it is a file that exists.
    moved = [i for i in args.input if _OVERRIDE.match(i) and not os.path.exists(i)]
    args.input = [i for i in args.input if i not in moved]
    args.opts = moved + args.opts
    if not args.input:
        p.error("--input needs at least one image, folder or glob pattern")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[predict] %(levelname)s %(message)s",
                        stream=sys.stderr)
    from efl.export import quiet_inference_logs

    with quiet_inference_logs():
        return _run(args)


def _run(args) -> int:
    warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)  # Detectron2
    from tqdm import tqdm

    from efl.engine import load_config
    from efl.engine.trainer import dataset_names
    from efl.errors import InputError, report_input_error
    from efl.export import build_inference_model
    from efl.predict import Predictor, PredictionRun, class_metadata, expand_inputs, no_images_error

    try:
        cfg = load_config(args.config_file, args.opts)
        paths = expand_inputs(args.input)
        if not paths:
            raise no_images_error(args.input)
        model = build_inference_model(cfg)
        metadata = class_metadata(dataset_names(cfg.dataloader.test)[0])
        run = PredictionRun(Predictor(cfg, model), metadata, args.output, args.score_thresh)
        for path in tqdm(paths, disable=len(paths) <= 3, unit="image", file=sys.stderr):
            run.add(path)
        results = run.finish()
    except InputError as e:
        return report_input_error(e)
    done = run.num_images - len(run.skipped)
    print(f"{done} image(s) -> {args.output}/, {len(run.results)} detections with score >= "
          f"{args.score_thresh} in {results}")
    if run.skipped:
        print(f"ERROR: skipped {len(run.skipped)} unreadable image(s): {', '.join(run.skipped)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
