#!/usr/bin/env python
"""Train and evaluate EFL (and baseline) detectors from a LazyConfig.

    python train_net.py --config-file configs/Synthetic/retinanet_efl.py
    python train_net.py --config-file configs/LVISv1/retinanet_R_50_FPN_2x_efl.py --num-gpus 8
    python train_net.py --config-file ... --eval-only train.init_checkpoint=output/.../model_final.pth
    python train_net.py --config-file ... --resume          # continue from last_checkpoint

``--resume`` after a crash or kill continues exactly where the last checkpoint left off
(same final weights as an uninterrupted run). SIGTERM or SLURM's early warning (USR2)
stops training after the iteration in progress, with its checkpoint, and exit status
128 + signal (143, 140): docs/preemption.md. Multi-machine: Detectron2's
--num-machines M --machine-rank R --dist-url tcp://HOST:PORT. Without CUDA, --num-gpus N
starts N CPU processes that talk over gloo.

Bad input (config key or value, dataset files, images, checkpoints, a diverging loss)
stops with one paragraph saying what is wrong and how to fix it, and exit status 2.
"""

import contextlib
import logging
import os
import sys

import torch
import torch.multiprocessing as mp

from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from efl.checkpoint import EFLCheckpointer
from efl.compat import launch
from efl.data import prepare_datasets
from efl.data.custom import setup_custom_dataset
from efl.engine import (Trainer, dataset_names, forward_to_workers, load_config, plan_run,
                        quiet_input_error_tracebacks)
from efl.engine.ema import use_checkpoint_ema
from efl.errors import InputError

logger = logging.getLogger("efl.train_net")
_CONFIGS = {}  # (config file, overrides) -> config loaded in this process


def setup_config(args):
    """The config with its command-line overrides, checked (ConfigError); loaded once per
    process (a config file may register datasets; a ``dataset`` node, configs/Custom/, is
    registered here)."""
    key = (args.config_file, tuple(args.opts))
    if key not in _CONFIGS:
        _CONFIGS[key] = setup_custom_dataset(load_config(args.config_file, args.opts))
    return _CONFIGS[key]


def report(error: InputError) -> None:
    """The error's message, once per process that met it, without a stack trace."""
    message = " ".join(str(error).split())
    if comm.get_world_size() > 1 and not comm.is_main_process():
        message = f"[rank {comm.get_rank()}] {message}"
    if logging.getLogger("efl").handlers and comm.is_main_process():
        logger.error(message)  # console and log.txt
    else:
        print(f"ERROR: {message}", file=sys.stderr, flush=True)


def main(args):
    try:
        cfg = setup_config(args)
        default_setup(cfg, args)
        setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="efl",
                     abbrev_name="efl")
        quiet_input_error_tracebacks()
        if args.eval_only:
            prepare_datasets(dataset_names(cfg.dataloader.test))
            model = Trainer.build_model(cfg)
            rest = EFLCheckpointer(model, cfg.train.output_dir).resume_or_load(
                cfg.train.init_checkpoint, resume=args.resume
            )
            use_checkpoint_ema(cfg.train, model, rest)
            return Trainer.test(cfg, model)
        trainer = Trainer(cfg, plan_run(cfg, resume=args.resume))
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()
    except InputError as e:
        report(e)
        sys.exit(2)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:  # config errors: once, before any process starts
        setup_config(args)
    except InputError as e:
        report(e)
        sys.exit(2)
    if args.num_gpus > 1 and not torch.cuda.is_available():  # as torchrun: share the cores
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.num_gpus)))
    # With worker processes this one only waits: it passes SIGTERM / SLURM's USR2 on to
    # them (each checkpoints and exits with 128 + signal) rather than dying before them.
    workers = args.num_gpus * args.num_machines > 1  # launch() spawns them (even 1 per machine)
    forwarding = forward_to_workers() if workers else contextlib.nullcontext()
    try:
        with forwarding:
            launch(
                main,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(args,),
            )
    except mp.ProcessExitedException as e:  # a worker's exit 2 (or 128 + signal) is ours
        if e.exit_code is None or e.exit_code <= 0:
            raise
        sys.exit(e.exit_code)
