#!/usr/bin/env python
"""Train and evaluate EFL detectors from a Detectron2 YAML config with
``efl.engine.YAMLTrainer`` (Detectron2's ``tools/train_net.py``, with the project's run
guarantees: docs/yaml-route.md).

    python tools/train_yaml.py --config-file configs/yaml/efl_retinanet_R_50_FPN.yaml
    python tools/train_yaml.py --config-file ... --num-gpus 8 SOLVER.AMP.ENABLED True
    python tools/train_yaml.py --config-file ... --resume        # continue from last_checkpoint
    python tools/train_yaml.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth

``--resume`` continues exactly where the last checkpoint left off. SIGTERM or SLURM's
early warning (USR2) stops training after the iteration in progress, with its checkpoint,
and exit status 128 + signal (docs/preemption.md). Bad input: one paragraph, exit 2.
"""

import contextlib
import sys

import torch.multiprocessing as mp

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import efl
from efl.checkpoint import EFLCheckpointer
from efl.compat import launch
from efl.data import prepare_datasets
from efl.engine import YAMLTrainer, forward_to_workers, quiet_input_error_tracebacks
from efl.errors import ConfigError, InputError


def setup(args):
    """The config file with its command-line overrides (``MODEL.ATSS`` and ``MODEL.EFL``
    known), frozen; Detectron2's ``default_setup`` (logging, seed, config in OUTPUT_DIR)."""
    cfg = get_cfg()
    efl.add_atss_config(cfg)  # MODEL.ATSS and MODEL.EFL (add_efl_config)
    try:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except (KeyError, ValueError, AssertionError, OSError) as e:
        raise ConfigError(f"{args.config_file} with overrides {args.opts}: "
                          f"{type(e).__name__}: {e}") from None
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="efl", abbrev_name="efl")
    quiet_input_error_tracebacks()
    return cfg


def main(args):
    try:
        cfg = setup(args)
        prepare_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
        if args.eval_only:
            model = YAMLTrainer.build_model(cfg)
            EFLCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
                cfg.MODEL.WEIGHTS, resume=args.resume)
            return YAMLTrainer.test(cfg, model)
        trainer = YAMLTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()
    except InputError as e:
        print(f"ERROR: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    # With worker processes this one only waits: it passes SIGTERM / SLURM's USR2 on to
    # them (each checkpoints and exits with 128 + signal) rather than dying before them.
    workers = args.num_gpus * args.num_machines > 1
    try:
        with forward_to_workers() if workers else contextlib.nullcontext():
            launch(main, args.num_gpus, num_machines=args.num_machines,
                   machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    except mp.ProcessExitedException as e:  # a worker's exit 2 (or 128 + signal) is ours
        if e.exit_code is None or e.exit_code <= 0:
            raise
        sys.exit(e.exit_code)
