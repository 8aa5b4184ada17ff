#!/usr/bin/env python
"""Train a grid of settings x seeds in one command: one run after another on this machine
(train_net.py, a process per run), or one SLURM job per run (--slurm).

    python tools/sweep.py --config-file configs/LVISv1/efl_improved_R_50_FPN_24ep.py \\
        --set model.cls_loss.scale_factor=0,2,4,8 --seeds 0,1,2 --out output/sweep_s
    python tools/sweep.py --config-file configs/Synthetic/retinanet_efl.py \\
        --set model.cls_loss.scale_factor=0,8 --set model.cls_loss.gamma_b=1,2 \\
        --seeds 0,1 --out output/sweep_small train.max_iter=500     # 2 x 2 x 2 runs
    python tools/sweep.py ... --num-gpus 8                 # this machine, 8 GPUs per run
    python tools/sweep.py ... --slurm --nodes 1 --gpus-per-node 8 --partition gpu
    python tools/compare.py --sweep output/sweep_s --baseline scale_factor=0 --out R

Several --set options span their cartesian product; every run gets its folder under --out
(e.g. scale_factor=2_seed1) and --out/sweep.json lists them. Rerunning the command skips
the runs that finished and resumes the ones that were cut (from their last checkpoint),
so it completes the grid. Overrides after the options (KEY=VALUE) apply to every run.
A bad grid (unknown key, empty list, a value out of range) stops with one paragraph,
exit status 2, before anything starts; a run that fails leaves the others running
(exit status 1 at the end).
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "EFL"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a config key and its values (repeat for a product grid)")
    p.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2 (default: 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="the sweep's folder")
    p.add_argument("--num-gpus", type=int, default=1,
                   help="processes per run on this machine (train_net.py --num-gpus)")
    p.add_argument("--dry-run", action="store_true", help="check the grid and list the runs")
    s = p.add_argument_group("SLURM (tools/submit_slurm.py's options, per run)")
    s.add_argument("--slurm", action="store_true", help="submit one job per run")
    s.add_argument("--nodes", type=int, default=1)
    s.add_argument("--gpus-per-node", type=int, default=8)
    s.add_argument("--partition", default=None)
    s.add_argument("--timeout", type=int, default=24 * 60, help="minutes per allocation")
    s.add_argument("--cpus-per-gpu", type=int, default=8)
    s.add_argument("--max-timeouts", type=int, default=10)
    s.add_argument("--cluster", choices=("auto", "slurm", "local"), default="auto")
    s.add_argument("--resubmit", action="store_true",
                   help="submit again runs that were submitted before and have not finished")
    args, opts = p.parse_known_args(argv)
    return args, opts[1:] if opts[:1] == ["--"] else opts


def main(argv=None) -> int:
    args, opts = parse_args(argv)
    from efl.errors import InputError
    from efl.experiments.grid import parse_seeds, parse_set
    from efl.experiments.sweep import Sweep

    try:
        sets = [parse_set(text) for text in args.set]
        seeds = parse_seeds(args.seeds)
        sweep = Sweep(args.config_file, sets, seeds, opts, args.out, local=not args.slurm)
    except InputError as e:
        print(f"[sweep] ERROR: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"[sweep] {len(sweep.runs)} runs ({len({r.setting for r in sweep.runs})} settings x "
          f"{len(seeds)} seeds); manifest {sweep.manifest}", flush=True)
    if args.dry_run:
        for run in sweep.runs:
            print(f"[sweep] {run.name}: {sweep.state(run)}")
        return 0
    if not args.slurm:
        return sweep.run_local(args.num_gpus)
    try:
        sweep.submit(resubmit=args.resubmit, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                     timeout_min=args.timeout, partition=args.partition,
                     cluster=None if args.cluster == "auto" else args.cluster,
                     cpus_per_gpu=args.cpus_per_gpu, max_timeouts=args.max_timeouts)
    except InputError as e:
        print(f"[sweep] ERROR: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
