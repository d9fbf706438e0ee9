"""The training loop. Setup lives in run_setup; this file is the loop and its bookkeeping."""
from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hydra_dist.checkpoint import CheckpointManager
from hydra_dist.config import RunConfig, to_dict
from hydra_dist.distributed.init import init_distributed, shutdown
from hydra_dist.parallel.deepspeed_engine import build_deepspeed
from hydra_dist.perf.mfu import mfu_metrics  # tflops_per_s, mfu (docs/performance.md)
from hydra_dist.parallel.megatron_engine import build_megatron, megatron_step

from . import faults
from .preemption import FINISHED_MARKER, PreemptionFlag
from .step import Phase, deepspeed_step, loss_denominators
from .run_setup import (build_loader, build_model, make_tracker, prepare_data, resolve_batch,
                        run_tags, write_resolved)

log = logging.getLogger("hydra_dist")


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _noise_seed(seed: int, step: int) -> int:
    # Tuple hashing of ints is deterministic in CPython (no hash randomisation for ints). The
    # model mixes in each sample's id, so the layout (DP split, micro-batches) changes nothing.
    return hash((seed, step)) % (2 ** 62)


def train(cfg: RunConfig) -> dict:
    p = cfg.parallel
    layout = init_distributed(p.tp, p.pp, p.timeout_s, p.backend)
    try:
        return _train(cfg, layout)
    except Exception as e:
        # Name the rank and what it was doing: a timed-out collective otherwise reads as a
        # bare gloo/NCCL error from deep inside a library.
        log.error("rank %d (tp %d, pp %d, dp %d) failed during %s: %s: %s", layout.rank,
                  layout.tp_rank, layout.pp_rank, layout.dp_rank, Phase.current, type(e).__name__, e)
        raise
    finally:
        shutdown()


def _train(cfg: RunConfig, layout) -> dict:
    resolve_batch(cfg, layout)   # parallel.grad_accum from train.global_batch
    run_dir = Path(cfg.output_dir)
    if layout.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_resolved(cfg, run_dir)
    dist.barrier()
    data_path = prepare_data(cfg, run_dir, layout)
    if cfg.parallel.engine == "megatron":  # DP x TP x PP, megatron-core pipeline schedules
        engine, engine_step = build_megatron(cfg, layout), megatron_step
    else:                                   # DP x TP, ZeRO 0-3
        engine, engine_step = build_deepspeed(build_model(cfg, layout), cfg), deepspeed_step
    device = engine.device
    ckpt = CheckpointManager(run_dir / "checkpoints", cfg.checkpoint.keep_last, layout.rank)
    state = {"step": 0, "consumed_samples": 0, "consumed_tokens": 0, "data": None,
             "mlflow_run_id": None}
    tag = ckpt.latest() if cfg.checkpoint.resume else None
    if tag:
        state = ckpt.load(engine, tag)
        log.info("resumed from %s at step %d", run_dir / "checkpoints" / tag, state["step"])
    loader = build_loader(cfg, data_path, layout, state["data"])
    tracker = make_tracker(cfg, run_dir, layout, state["mlflow_run_id"])
    if tag is None:
        tracker.log_params(to_dict(cfg))
        tracker.set_tags(run_tags(cfg, layout))
        tracker.log_artifact(str(run_dir / "config.yaml"))
    metrics_file = run_dir / "metrics.jsonl"
    if tag and layout.holds_loss and metrics_file.is_file():
        # Steps logged after the checkpoint we resume from are redone: drop them so the file
        # has every step exactly once (a crash between checkpoints otherwise repeats them).
        keep = [ln for ln in metrics_file.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] <= state["step"]]
        metrics_file.write_text("".join(ln + "\n" for ln in keep))
    ga, step = cfg.parallel.grad_accum, state["step"]
    from megatron.core import parallel_state as ps
    dp_group = ps.get_data_parallel_group()
    stop_at = cfg.train.stop_at_step or cfg.train.steps
    history = []
    preempt = PreemptionFlag(cfg.checkpoint.grace_s)
    stopped_by = None
    skipped, skipped_in_row = state.get("skipped_steps", 0), 0
    grid = None
    if cfg.model.tokenizer_from and cfg.train.eval_every and cfg.parallel.engine != "deepspeed":
        # the sampler needs the whole model in one place; pipeline chunks are not
        log.info("train.eval_every: no sample grids on the megatron engine (sample from a "
                 "checkpoint with hydra-generate, which reads its shards)")
    elif cfg.model.tokenizer_from and cfg.train.eval_every:
        from hydra_dist.data.tokenizer import load_tokenizer

        from .evaluation import SampleGrid
        grid = SampleGrid(cfg, load_tokenizer(cfg.data.tokenizer))
    while step < min(cfg.train.steps, stop_at):
        faults.at_step_start(step + 1, layout.rank)  # HYDRA_FAULT: reliability tests only
        t0 = time.perf_counter()
        Phase.set("data loading")
        batches = [next(loader) for _ in range(ga)]
        ntp_den, fm_den, counts = loss_denominators(batches, dp_group, layout.dp)
        inject = step + 1 in cfg.train.inject_nan_at_steps  # fault-injection tests only
        res = engine_step(engine, batches, lambda b: _to_device(b, device),
                          _noise_seed(cfg.train.seed, step), ntp_den, fm_den, dp_group,
                          cfg.parallel.micro_batch_size * layout.dp, inject)
        acc = res["acc"]
        if res["skipped"]:
            skipped, skipped_in_row = skipped + 1, skipped_in_row + 1
            log.warning("step %d: non-finite loss on some rank; step skipped (%d in a row, %d total)",
                        step + 1, skipped_in_row, skipped)
            if skipped_in_row >= cfg.train.max_skipped_in_row:
                stopped_by = f"{skipped_in_row} non-finite steps in a row"
        else:
            skipped_in_row = 0
        step += 1
        g_samples = cfg.parallel.micro_batch_size * ga * layout.dp
        state["consumed_samples"] += g_samples
        state["consumed_tokens"] += int(counts[2].item())
        dt = time.perf_counter() - t0
        denom = ga * layout.dp
        m = {"loss": acc[0].item() / denom, "ntp_loss": acc[1].item() / denom,
             "fm_loss": acc[2].item() / denom, "grad_norm": float(engine.get_global_grad_norm() or 0.0),
             "samples_per_s": g_samples / dt, "tokens_per_s": counts[2].item() / dt,
             "step_time_s": dt, "consumed_samples": state["consumed_samples"],
             "skipped_steps": skipped,
             "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
        if torch.device(device).type == "cuda":   # what benchmarks/gpu_step.py holds against the planner
            m["gpu_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        log_now = step % cfg.train.log_every == 0   # the same on every rank
        if log_now:  # a collective: only on logging steps, where every rank takes part
            errors = loader.error_counts(all_ranks=True)
            m["data_errors"] = sum(errors.values())
            m.update({f"data_errors/{k}": v for k, v in errors.items() if v})
        m.update(mfu_metrics(cfg, batches, dt, layout.tp * layout.pp, device))
        for i, g in enumerate(engine.optimizer.param_groups):
            m[f"lr/{g.get('name', i)}"] = g["lr"]
        history.append(m)
        if layout.holds_loss and log_now:
            tracker.log_metrics(m, step)
            with metrics_file.open("a") as f:
                f.write(json.dumps({"step": step, **m}) + "\n")
            log.info("step %d/%d loss %.4f ntp %.4f fm %.4f gnorm %.3f %.1f samples/s",
                     step, cfg.train.steps, m["loss"], m["ntp_loss"], m["fm_loss"],
                     m["grad_norm"], m["samples_per_s"])
        if grid is not None and (step % cfg.train.eval_every == 0 or step == cfg.train.steps):
            Phase.set("sample grid")
            imgs = grid.images(engine.module)
            if layout.holds_loss:
                tracker.log_image_grid(imgs, "generated", step)
        if preempt.agreed():
            stopped_by = preempt.raised or "peer rank signal"
        if step % cfg.checkpoint.every == 0 or step in (cfg.train.steps, stop_at) or stopped_by:
            Phase.set("checkpoint save")
            state.update(step=step, data=loader.state_dict(), mlflow_run_id=tracker.run_id,
                         skipped_steps=skipped)
            t_save = time.perf_counter()
            saved = ckpt.save(engine, step, state)
            preempt.note_save(dt, time.perf_counter() - t_save)
            log.info("checkpoint %s", run_dir / "checkpoints" / saved)
        if stopped_by:
            log.warning("stopping at step %d after %s; re-run the same command to resume", step, stopped_by)
            break
    if stopped_by and "non-finite" in stopped_by:
        tracker.finish("FAILED")
        raise RuntimeError(f"training stopped at step {step}: {stopped_by} (checkpoint saved; "
                           "lower the learning rate or inspect the data before resuming)")
    finished = step >= cfg.train.steps
    if finished and layout.rank == 0:
        (run_dir / FINISHED_MARKER).write_text(f"{step}\n")
    if layout.holds_loss and metrics_file.is_file():
        tracker.log_loss_curve(str(metrics_file))
    tracker.finish("FINISHED" if finished or stop_at < cfg.train.steps else "KILLED")
    return {"step": step, "history": history, "run_dir": str(run_dir), "finished": finished,
            "stopped_by": stopped_by, "mlflow_run_id": tracker.run_id}
