"""The training loop, for both tasks (train/tasks/) on both engines (parallel/engine.py).

Setup lives in run_setup and the task; this file is the loop and its bookkeeping: the same
guards (non-finite steps skipped on every rank, too many in a row stop), fault phases, metrics,
resume, preemption and finishing whatever is trained.
"""
from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hydra_dist import faults
from hydra_dist.checkpoint import CheckpointManager
from hydra_dist.config import RunConfig, to_dict
from hydra_dist.data.loader import to_device
from hydra_dist.distributed.init import init_distributed, shutdown
from hydra_dist.distributed.phase import Phase
from hydra_dist.perf.mfu import mfu_metrics  # tflops_per_s, mfu (docs/performance.md)

from .preemption import FINISHED_MARKER, PreemptionFlag
from .run_setup import make_tracker, prepare_data, resolve_batch, run_tags, write_resolved
from .tasks import make_task

log = logging.getLogger("hydra_dist")


def train(cfg: RunConfig) -> dict:
    p = cfg.parallel
    layout = init_distributed(p.tp, p.pp, p.timeout_s, p.backend)
    try:
        return Run(cfg, layout).loop()
    except Exception as e:
        # Name the rank and what it was doing: a timed-out collective otherwise reads as a
        # bare gloo/NCCL error from deep inside a library.
        log.error("rank %d (tp %d, pp %d, dp %d) failed during %s: %s: %s", layout.rank,
                  layout.tp_rank, layout.pp_rank, layout.dp_rank, Phase.current, type(e).__name__, e)
        raise
    finally:
        shutdown()


class Run:
    """One run's state: set up on construction, stepped by loop()."""

    def __init__(self, cfg: RunConfig, layout):
        self.cfg, self.layout, self.task = cfg, layout, make_task(cfg)
        resolve_batch(cfg, layout)   # parallel.grad_accum from train.global_batch
        self.run_dir = run_dir = Path(cfg.output_dir)
        if layout.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_resolved(cfg, run_dir)
        dist.barrier()
        data_path = prepare_data(cfg, run_dir, layout)
        self.engine = self.task.build_engine(layout)
        if layout.rank == 0:
            log.info(self.task.fast_paths(self.engine.device))
        self.ckpt = CheckpointManager(run_dir / "checkpoints", cfg.checkpoint.keep_last, layout.rank)
        self.state = {"step": 0, "consumed_samples": 0, "consumed_tokens": 0, "data": None,
                      "mlflow_run_id": None}
        tag = self.ckpt.latest() if cfg.checkpoint.resume else None
        if tag:
            self.state = {"consumed_tokens": 0, **self.ckpt.load(self.engine.state_engine, tag)}
            self.task.load_extra_state(self.ckpt.load_extra(tag))
            log.info("resumed from %s at step %d", run_dir / "checkpoints" / tag, self.state["step"])
        self.loader = self.task.build_loader(data_path, layout, self.state["data"])
        self.tracker = tracker = make_tracker(cfg, run_dir, layout, self.state["mlflow_run_id"])
        if tag is None:
            tracker.log_params(to_dict(cfg))
            tracker.set_tags({**run_tags(cfg, layout), **self.task.tags()})
            tracker.log_artifact(str(run_dir / "config.yaml"))
        self.metrics_file = run_dir / "metrics.jsonl"
        if tag and layout.holds_loss and self.metrics_file.is_file():
            # Steps logged after the checkpoint we resume from are redone: drop them so the file
            # has every step exactly once (a crash between checkpoints otherwise repeats them).
            keep = [ln for ln in self.metrics_file.read_text().splitlines()
                    if ln.strip() and json.loads(ln)["step"] <= self.state["step"]]
            self.metrics_file.write_text("".join(ln + "\n" for ln in keep))
        self.task.on_start(self.engine, layout, tracker, fresh=tag is None)
        self.skipped, self.skipped_in_row = self.state.get("skipped_steps", 0), 0

    def loop(self) -> dict:
        cfg, layout, task, engine = self.cfg, self.layout, self.task, self.engine
        step, stop_at = self.state["step"], cfg.train.stop_at_step or cfg.train.steps
        history, preempt, stopped_by = [], PreemptionFlag(cfg.checkpoint.grace_s), None
        while step < min(cfg.train.steps, stop_at):
            faults.at_step_start(step + 1, layout.rank)  # HYDRA_FAULT: reliability tests only
            t0 = time.perf_counter()
            Phase.set("data loading")
            batches = [next(self.loader) for _ in range(cfg.parallel.grad_accum)]
            dev_batches, spec = task.prepare_step(batches, step, layout)
            if step + 1 in cfg.train.inject_nan_at_steps:   # fault-injection tests only
                spec.nan_from_micro = faults.nan_micro()
            res = engine.train_step([to_device(b, engine.device) for b in dev_batches], spec)
            extra = task.after_step(res.skipped, layout)
            stopped_by = self._count_skip(res.skipped, step + 1)
            step += 1
            m = self._metrics(res, spec, batches, time.perf_counter() - t0, step, extra)
            history.append(m)
            task.evaluate(engine, step, layout, self.tracker)
            if preempt.agreed():
                stopped_by = preempt.raised or "peer rank signal"
            if step % cfg.checkpoint.every == 0 or step in (cfg.train.steps, stop_at) or stopped_by:
                self._save(step, preempt, m["step_time_s"])
            if stopped_by:
                log.warning("stopping at step %d after %s; re-run the same command to resume",
                            step, stopped_by)
                break
        return self._finish(step, stop_at, stopped_by, history)

    def _count_skip(self, skipped: bool, step: int):
        if not skipped:
            self.skipped_in_row = 0
            return None
        self.skipped, self.skipped_in_row = self.skipped + 1, self.skipped_in_row + 1
        log.warning("step %d: non-finite loss on some rank; step skipped (%d in a row, %d total)",
                    step, self.skipped_in_row, self.skipped)
        if self.skipped_in_row >= self.cfg.train.max_skipped_in_row:
            return f"{self.skipped_in_row} non-finite steps in a row"
        return None

    def _metrics(self, res, spec, batches, dt: float, step: int, extra: dict) -> dict:
        cfg, layout, engine, task = self.cfg, self.layout, self.engine, self.task
        g_samples = cfg.parallel.micro_batch_size * cfg.parallel.grad_accum * layout.dp
        self.state["consumed_samples"] += g_samples
        denom = cfg.parallel.grad_accum * layout.dp
        m = {task.log_names[k]: v / denom for k, v in zip(spec.keys, res.acc.tolist())}
        m.update(grad_norm=float(engine.get_global_grad_norm() or 0.0),
                 samples_per_s=g_samples / dt, step_time_s=dt,
                 consumed_samples=self.state["consumed_samples"], skipped_steps=self.skipped,
                 max_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, **extra)
        if spec.tokens is not None:
            self.state["consumed_tokens"] += int(spec.tokens)
            m["tokens_per_s"] = spec.tokens / dt
        if torch.device(engine.device).type == "cuda":   # benchmarks/gpu_step.py holds it against the planner
            m["gpu_peak_gb"] = torch.cuda.max_memory_allocated(engine.device) / 2 ** 30
        log_now = step % cfg.train.log_every == 0   # the same on every rank
        if log_now:  # a collective: only on logging steps, where every rank takes part
            errors = self.loader.error_counts(all_ranks=True)
            m["data_errors"] = sum(errors.values())
            m.update({f"data_errors/{k}": v for k, v in errors.items() if v})
        m.update(mfu_metrics(cfg, batches, dt, layout.tp * layout.pp, engine.device))
        for i, g in enumerate(engine.optimizer.param_groups):
            m[f"lr/{g.get('name', i)}"] = g["lr"]
        if layout.holds_loss and log_now:
            self.tracker.log_metrics(m, step)
            with self.metrics_file.open("a") as f:
                f.write(json.dumps({"step": step, **m}) + "\n")
            log.info("step %d/%d loss %.4f %s gnorm %.3f %.1f samples/s", step, cfg.train.steps,
                     m["loss"], task.log_line(m), m["grad_norm"], m["samples_per_s"])
        return m

    def _save(self, step: int, preempt, step_s: float) -> None:
        Phase.set("checkpoint save")
        self.state.update(step=step, data=self.loader.state_dict(), mlflow_run_id=self.tracker.run_id,
                          skipped_steps=self.skipped)
        t_save = time.perf_counter()
        saved = self.ckpt.save(self.engine.state_engine, step, self.state,
                               extra=self.task.extra_state())
        preempt.note_save(step_s, time.perf_counter() - t_save)
        log.info("checkpoint %s", self.run_dir / "checkpoints" / saved)

    def _finish(self, step: int, stop_at: int, stopped_by, history) -> dict:
        layout, tracker, run_dir = self.layout, self.tracker, self.run_dir
        if stopped_by and "non-finite" in stopped_by:
            tracker.finish("FAILED")
            raise RuntimeError(f"training stopped at step {step}: {stopped_by} (checkpoint saved; "
                               "lower the learning rate or inspect the data before resuming)")
        finished = step >= self.cfg.train.steps
        out = self.task.on_finish(self.engine, run_dir, step, layout, tracker, finished)
        if finished and layout.rank == 0:
            (run_dir / FINISHED_MARKER).write_text(f"{step}\n")
        if layout.holds_loss and self.metrics_file.is_file():
            tracker.log_loss_curve(str(self.metrics_file))
        tracker.finish("FINISHED" if finished or stop_at < self.cfg.train.steps else "KILLED")
        last = history[-1] if history else {}
        losses = {n: last.get(n) for n in self.task.log_names.values()}   # what the CLI prints
        return {"step": step, "history": history, "run_dir": str(run_dir), "finished": finished,
                "stopped_by": stopped_by, "mlflow_run_id": tracker.run_id, "losses": losses, **out}
