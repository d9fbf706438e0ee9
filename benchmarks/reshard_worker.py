"""torchrun worker of bench_reshard.py: build the engine (DeepSpeed or megatron) as the trainer does, time
CheckpointManager.load of the run's latest checkpoint, and report the peak resident memory it
added on this rank. Writes one JSON line per rank to OUT."""
import json
import os
import resource
import sys
import time
from pathlib import Path

from hydra_dist.checkpoint import CheckpointManager
from hydra_dist.config import load_config
from hydra_dist.distributed.init import init_distributed, shutdown
from hydra_dist.train.run_setup import resolve_batch
from hydra_dist.train.tasks.unified import UnifiedTask


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def main(out: str, args: list) -> None:
    import torch.distributed as dist
    cfg = load_config(args[0], args[1:], world_size=int(os.environ["WORLD_SIZE"]))
    p = cfg.parallel
    layout = init_distributed(p.tp, p.pp, p.timeout_s, p.backend)
    try:
        resolve_batch(cfg, layout)
        engine = UnifiedTask(cfg).build_engine(layout).state_engine   # as the trainer does
        ckpt = CheckpointManager(Path(cfg.output_dir) / "checkpoints", 2, layout.rank)
        tag = ckpt.latest()
        dist.barrier()
        before, t0 = current_rss_mb(), time.perf_counter()
        ckpt.load(engine, tag)
        took = time.perf_counter() - t0
        row = {"rank": layout.rank, "world": layout.world, "load_s": took,
               "peak_added_mb": max(0.0, rss_peak_mb() - before)}
        rows = [None] * layout.world
        dist.all_gather_object(rows, row)
        if layout.rank == 0:
            with open(out, "w") as f:
                f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    finally:
        shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
