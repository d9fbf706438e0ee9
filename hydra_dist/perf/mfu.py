"""Model FLOPs utilisation: the FLOPs model's work per second against a peak.

Peak, in order: `train.peak_tflops` when > 0; the device's dense peak from the table below
(H100 SXM and H200: 989 TFLOPs bf16, 494 TF32 for fp32 runs); on CPU a matmul rate measured once
per process (fp32, the threads this process has), so a CPU run's MFU says how close the step
comes to what this box's matmul reaches.
"""
from __future__ import annotations

import logging
import time

import torch

from .flops import step_flops

log = logging.getLogger("hydra_dist")

# Dense (no 2:4 sparsity) peak TFLOPs: (bf16/fp16, fp32 via TF32).
GPU_PEAKS = {"h100": (989.0, 494.5), "h200": (989.0, 494.5), "a100": (312.0, 156.0),
             "h800": (989.0, 494.5), "gh200": (989.0, 494.5)}


def measure_cpu_tflops(n: int = 512, seconds: float = 0.3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    return 2.0 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def gpu_peak_tflops(name: str, bf16: bool) -> float | None:
    name = name.lower()
    for key in sorted(GPU_PEAKS, key=len, reverse=True):
        if key in name:
            return GPU_PEAKS[key][0 if bf16 else 1]
    return None


def peak_tflops(cfg, device=None) -> tuple[float, str]:
    """(peak TFLOPs per device, where the number came from)."""
    configured = getattr(cfg.train, "peak_tflops", 0.0)
    if configured and configured > 0:
        return float(configured), "train.peak_tflops"
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        peak = gpu_peak_tflops(name, cfg.parallel.precision == "bf16")
        if peak is not None:
            return peak, f"table ({name})"
        log.warning("no peak FLOPs known for %s: set train.peak_tflops for a meaningful MFU", name)
        return float("nan"), f"unknown GPU {name}"
    return measure_cpu_tflops(), f"measured CPU matmul ({torch.get_num_threads()} threads)"


class MfuMeter:
    def __init__(self, cfg, device=None, tp: int = 1):
        self.cfg, self.tp = cfg, tp
        self.peak, self.source = peak_tflops(cfg, device)
        log.info("MFU against %.3g TFLOPs per device (%s)", self.peak, self.source)

    def metrics(self, batches, seconds: float) -> dict:
        """tflops_per_s and mfu of this rank: its share of each micro-batch is 1/(tp*pp) (the
        caller passes tp * pp as `tp`)."""
        flops = sum(step_flops(self.cfg, b) for b in batches) / self.tp
        tflops = flops / max(seconds, 1e-12) / 1e12
        return {"tflops_per_s": tflops, "mfu": tflops / self.peak}


_METERS: dict = {}


def mfu_metrics(cfg, batches, seconds: float, tp: int = 1, device=None) -> dict:
    """What the trainer adds to its per-step metrics; the peak is found once per process."""
    key = (id(cfg), tp, str(device))
    if key not in _METERS:
        _METERS[key] = MfuMeter(cfg, device, tp)
    return _METERS[key].metrics(batches, seconds)
