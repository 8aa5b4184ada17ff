#!/usr/bin/env python
"""Train and evaluate EFL (and baseline) detectors from a LazyConfig.

    python train_net.py --config-file configs/Synthetic/retinanet_efl.py
    python train_net.py --config-file configs/LVISv1/retinanet_R_50_FPN_2x_efl.py --num-gpus 8
    python train_net.py --config-file ... --eval-only train.init_checkpoint=output/.../model_final.pth
    python train_net.py --config-file ... --resume          # continue from last_checkpoint

Multi-machine: Detectron2's --num-machines M --machine-rank R --dist-url tcp://HOST:PORT.
Without CUDA, --num-gpus N starts N CPU processes that talk over gloo.
"""

import logging
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm

from efl.compat import launch
from efl.engine import Trainer
from efl.errors import InputError

logger = logging.getLogger("efl.train_net")


def main(args):
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    default_setup(cfg, args)
    try:
        if args.eval_only:
            model = Trainer.build_model(cfg)
            DetectionCheckpointer(model, cfg.train.output_dir).resume_or_load(
                cfg.train.init_checkpoint, resume=args.resume
            )
            return Trainer.test(cfg, model)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()
    except InputError as e:
        # The message says what is wrong and how to fix it: no stack trace.
        if comm.is_main_process():
            logger.error(str(e))
        sys.exit(2)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
