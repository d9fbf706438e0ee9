"""Under torchrun: hydra-pretrain with counters on torch.distributed's collectives and on the
tensor reads that wait for the device on a GPU (.item(), .cpu(), .tolist(), float(), int()),
counted only where hydra_dist's own code calls them, per training step (the step is taken from
faults.at_step_start, which the loop calls first thing in every step). Each rank writes
$SYNC_COUNT_REPORT.<rank>.json: {step: {"collective"|"read": {site: calls}}}."""
import atexit
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist

import hydra_dist.faults as faults

STEP = {"now": 0}
REPORT: dict = defaultdict(lambda: {"collective": defaultdict(int), "read": defaultdict(int)})


def _site(depth: int = 2):
    f = sys._getframe(depth)
    mod = f.f_globals.get("__name__", "")
    return f"{mod}:{f.f_code.co_name}" if mod.startswith("hydra_dist.") else None


def _counted(orig, kind):
    def call(*args, **kwargs):
        site = _site()
        if site:
            REPORT[STEP["now"]][kind][site] += 1
        return orig(*args, **kwargs)
    return call


for name in ("all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor",
             "reduce_scatter_tensor", "all_gather_object", "broadcast_object_list", "barrier"):
    setattr(dist, name, _counted(getattr(dist, name), "collective"))
for name in ("item", "cpu", "tolist", "__float__", "__int__"):
    setattr(torch.Tensor, name, _counted(getattr(torch.Tensor, name), "read"))
_start = faults.at_step_start


def at_step_start(step, rank):
    STEP["now"] = step
    return _start(step, rank)


faults.at_step_start = at_step_start
atexit.register(lambda: Path(f"{os.environ['SYNC_COUNT_REPORT']}.{os.environ['RANK']}.json")
                .write_text(json.dumps(REPORT)))

from hydra_dist.cli.pretrain import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
