"""Wraps torch.distributed's tensor collectives so that every call issued from hydra_dist's own
code is checked against the collective-device rule (distributed/init.py): the tensor must have
been placed by to_comm and sit on comm_device(group). Collectives issued inside DeepSpeed,
megatron-core or torch itself are theirs (they place tensors on the device already)."""
import sys

import torch.distributed as dist

from hydra_dist.distributed.init import COMM_MARK, comm_device

# name -> index of the tensor handed over (all_gather: the input, after the output list)
CHECKED = {"all_reduce": 0, "broadcast": 0, "reduce": 0, "all_gather": 1,
           "all_gather_into_tensor": 1, "reduce_scatter_tensor": 1}


def install(report: dict) -> None:
    """report gets 'sites' (caller file:line -> calls) and 'bad' (violations, described)."""
    report.setdefault("sites", {})
    report.setdefault("bad", [])
    for name, idx in CHECKED.items():
        setattr(dist, name, _checked(getattr(dist, name), name, idx, report))


def _checked(orig, name, idx, report):
    def call(*args, **kwargs):
        frame = sys._getframe(1)
        module = frame.f_globals.get("__name__", "")
        if module.startswith("hydra_dist."):
            site = f"{module}:{frame.f_lineno}"
            report["sites"][site] = report["sites"].get(site, 0) + 1
            t = args[idx] if len(args) > idx else kwargs.get("tensor")
            want = comm_device(kwargs.get("group"))
            if not getattr(t, COMM_MARK, False) or t.device != want:
                report["bad"].append(f"{name} at {site}: tensor on {t.device}, placed by "
                                     f"to_comm={getattr(t, COMM_MARK, False)}, group serves {want}")
        return orig(*args, **kwargs)
    return call
