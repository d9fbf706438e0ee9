"""hydra-pretrain: train HYDRA from a config.

Usage:
  hydra-pretrain [CONFIG] [key=value ...]                  one process
  torchrun --nproc_per_node N -m hydra_dist.cli.pretrain [CONFIG] [key=value ...]
  hydra-pretrain --nproc-per-node N [CONFIG] [key=value ...]  (launches torchrun for you)

CONFIG is a YAML file (or a name under configs/, e.g. tiny_cpu); without it the embedded tiny
CPU defaults run. Overrides use dotted keys: train.steps=100 parallel.zero_stage=2.
Re-running the same command resumes from the latest checkpoint in output_dir.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="hydra-pretrain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", help="YAML config file or name under configs/")
    ap.add_argument("overrides", nargs="*", help="key=value overrides")
    ap.add_argument("--nproc-per-node", type=int, default=0,
                    help="launch N local processes through torchrun")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ap.add_argument("--print-run-dir", action="store_true",
                    help="check the config and its files, print the run folder (output_dir) and "
                         "exit: what slurm/_launch.sh runs inside the job's container")
    args = ap.parse_args(argv)
    if args.config and "=" in args.config and not os.path.exists(args.config):
        args.overrides.insert(0, args.config)
        args.config = None
    return args


# Signals a scheduler or a person sends to the launcher; each becomes SIGUSR1 to every rank.
FORWARDED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2")
RESIGNAL_S = float(os.environ.get("HYDRA_RESIGNAL_S", "30"))


def launch_local(torchrun_args: list) -> int:
    """torchrun in a session of its own, so neither a terminal's Ctrl-C nor a signal to this
    launcher reaches torchrun, whose own SIGTERM handling kills the ranks 30 s later, whatever
    they are saving. A signal here is relayed as SIGUSR1 to each rank (torchrun's direct
    children, not their DataLoader workers), which checkpoint at the next step boundary and
    exit 0 (train/preemption.py); torchrun then exits with their status and so does this
    launcher. The ranks start with SIGUSR1 ignored (inherited) until the trainer installs its
    handler, so the relay is repeated every HYDRA_RESIGNAL_S seconds to each rank that did not
    yet have its handler when signalled."""
    import signal
    import subprocess
    import time

    import psutil
    got: list = []
    delivered: set = set()   # ranks that had their handler when signalled: never again, since a
    # Python process restores SIG_DFL while it exits, and a late repeat would kill it (-10)

    def catches_usr1(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/status") as f:
                cgt = next(ln for ln in f if ln.startswith("SigCgt:")).split()[1]
        except (OSError, StopIteration):
            return False
        return bool(int(cgt, 16) >> (signal.SIGUSR1 - 1) & 1)

    def relay() -> None:
        try:
            ranks = psutil.Process(proc.pid).children(recursive=False)
        except psutil.NoSuchProcess:
            return
        for r in ranks:
            if r.pid in delivered:
                continue
            ready = catches_usr1(r.pid)
            try:
                r.send_signal(signal.SIGUSR1)   # ignored (inherited SIG_IGN) until it is ready
            except psutil.NoSuchProcess:
                continue
            if ready:
                delivered.add(r.pid)

    def on_signal(signum, _frame):
        if not got:
            print(f"hydra-pretrain: received {signal.Signals(signum).name}: the ranks checkpoint at "
                  "the next step boundary and stop", file=sys.stderr, flush=True)
        got.append(signum)
        relay()

    old = signal.signal(signal.SIGUSR1, signal.SIG_IGN)   # inherited by torchrun and the ranks
    # torchrun sets OMP_NUM_THREADS=1 per rank when unset and prints a banner saying so; set it
    # here the same way (a value the user exported is kept), so the banner does not open the log
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *torchrun_args],
                            start_new_session=True, env=env)
    signal.signal(signal.SIGUSR1, old)
    for name in FORWARDED:
        signal.signal(getattr(signal, name), on_signal)
    last = time.monotonic()
    while True:
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            if got and time.monotonic() - last > RESIGNAL_S:
                relay()
                last = time.monotonic()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from hydra_dist.config import ConfigError, load_config, to_dict
    if args.print_run_dir:
        world = args.nproc_per_node or int(os.environ.get("WORLD_SIZE", "1"))
        try:
            cfg = load_config(args.config, args.overrides, world_size=world, check_files=True)
        except ConfigError as e:
            print(f"config error:\n{e}", file=sys.stderr)
            return 2
        print(cfg.output_dir)
        return 0
    if args.nproc_per_node and "RANK" not in os.environ:
        try:  # a bad config fails here, once, before torchrun starts any process
            load_config(args.config, args.overrides, world_size=args.nproc_per_node,
                        check_files=not args.print_config)
        except ConfigError as e:
            print(f"config error:\n{e}", file=sys.stderr)
            return 2
        rest = ([args.config] if args.config else []) + args.overrides
        if args.print_config:
            rest.append("--print-config")
        return launch_local(["--nproc_per_node", str(args.nproc_per_node), "-m",
                             "hydra_dist.cli.pretrain", *rest])
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    try:
        cfg = load_config(args.config, args.overrides, world_size=world,
                          check_files=not args.print_config)
    except ConfigError as e:  # before any process group starts
        print(f"config error:\n{e}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    rank = int(os.environ.get("RANK", "0"))
    from hydra_dist.logs import quiet_dependencies, setup_logging
    setup_logging(rank)
    quiet_dependencies()   # before megatron-core, DeepSpeed and cpp_extension load
    from hydra_dist.train.trainer import train
    result = train(cfg)
    if rank == 0:   # the last step's loss terms of this task (unified: loss, ntp_loss, fm_loss)
        print(json.dumps({"final_step": result["step"], "run_dir": result["run_dir"],
                          "finished": result["finished"], "stopped_by": result["stopped_by"],
                          "mlflow_run_id": result["mlflow_run_id"], **result["losses"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
