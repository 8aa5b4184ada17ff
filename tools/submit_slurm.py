#!/usr/bin/env python
"""Submit train_net.py to SLURM with submitit: the train_net.py command line plus the
job's shape. One task per node; each runs Detectron2's launcher (train_net.py) with
--num-gpus <gpus per node>, its node's machine rank and the first node's address. On
timeout or preemption the job requeues itself with --resume.

    python tools/submit_slurm.py --nodes 2 --gpus-per-node 8 --partition gpu --timeout 1440 \\
        --job-dir output/slurm/efl_r50 \\
        --config-file configs/LVISv1/efl_improved_R_50_FPN_24ep.py
    python tools/submit_slurm.py --cluster local --nodes 2 --gpus-per-node 1 --wait \\
        --config-file configs/Synthetic/retinanet_efl.py train.max_iter=20   # CPU, this machine

Everything not listed below goes to train_net.py (a leading `--` may separate them); do
not pass --num-gpus, --num-machines, --machine-rank or --dist-url: the job sets them.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "EFL"))

from efl.engine.slurm import submit  # noqa: E402
from efl.errors import InputError, report_input_error  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    p.add_argument("--timeout", type=int, default=24 * 60, help="minutes per allocation")
    p.add_argument("--job-dir", default="output/slurm", help="submitit's folder: job logs, pickles")
    p.add_argument("--cpus-per-gpu", type=int, default=8)
    p.add_argument("--name", default="efl")
    p.add_argument("--max-timeouts", type=int, default=10, help="requeues after a timeout")
    p.add_argument("--cluster", choices=("auto", "slurm", "local"), default="auto",
                   help="auto: SLURM if sbatch is found; local: this machine (CPU try-out)")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    args, train_args = p.parse_known_args(argv)
    if train_args[:1] == ["--"]:
        train_args = train_args[1:]
    try:
        job = submit(train_args, args.nodes, args.gpus_per_node, args.job_dir, args.timeout,
                     partition=args.partition, cluster=None if args.cluster == "auto" else args.cluster,
                     cpus_per_gpu=args.cpus_per_gpu, name=args.name, max_timeouts=args.max_timeouts)
    except InputError as e:
        sys.exit(report_input_error(e))
    folder = os.path.abspath(args.job_dir)
    print(f"submitted job {job.job_id}: {args.nodes} node(s) x {args.gpus_per_node} GPU(s); "
          f"logs {folder}/{job.job_id}_<task>_log.out / .err; training output: train.output_dir")
    if args.wait:
        job.results()
        print(f"job {job.job_id} finished: {job.state}")


if __name__ == "__main__":
    main()
