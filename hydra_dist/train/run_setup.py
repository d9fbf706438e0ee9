"""Everything a run needs before its first step: folders, data, model, engine, tracker."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
from pathlib import Path

import torch
import torch.distributed as dist

from hydra_dist.config import RunConfig, dump_yaml, to_dict
from hydra_dist.distributed.init import Layout
from hydra_dist.tracking import MLflowTracker, NullTracker, resolve_uri

log = logging.getLogger("hydra_dist")


def visual_tokens_per_image(cfg: RunConfig) -> int:
    v = cfg.model.vit
    return ((v.image_size // v.patch_size) // cfg.model.head.merge) ** 2


def prepare_data(cfg: RunConfig, run_dir: Path, layout: Layout) -> str:
    """The MDS path to read; generates the synthetic set once (rank 0) when neither data.path
    nor data.sources is given ("" when the sources define the data)."""
    if cfg.data.sources:
        return ""
    if cfg.data.path:
        if "://" not in cfg.data.path and not (Path(cfg.data.path) / "index.json").is_file():
            raise FileNotFoundError(f"data.path: {cfg.data.path} has no MDS index.json")
        return cfg.data.path
    out = run_dir / "data" / "synthetic"
    if layout.rank == 0:
        from hydra_dist.data.synthetic import write_synthetic_mds
        s = cfg.data.synthetic
        write_synthetic_mds(out, s.num_samples, s.seed, cfg.model.vit.image_size)
    dist.barrier()
    return str(out)


def build_loader(cfg: RunConfig, path: str, layout: Layout, state=None):
    from hydra_dist.data.collate import HydraCollator
    from hydra_dist.data.loader import StreamingBatches
    from hydra_dist.data.tokenizer import load_tokenizer
    tok = load_tokenizer(cfg.data.tokenizer)
    if tok.vocab_size > cfg.model.llm.vocab_size:
        raise ValueError(f"model.llm.vocab_size={cfg.model.llm.vocab_size} is smaller than the "
                         f"tokenizer's {tok.vocab_size} ({cfg.data.tokenizer})")
    d = cfg.data
    collate = HydraCollator(tok, cfg.model.vit.image_size, visual_tokens_per_image(cfg),
                            d.max_text_tokens, d.generation_fraction, d.seed,
                            pack_tokens=d.pack_tokens, cfg_dropout=d.cfg_dropout)
    return StreamingBatches(path, collate, cfg.parallel.micro_batch_size, layout.dp,
                            layout.tp * layout.pp, d.shuffle, d.seed, d.num_workers, state,
                            sources=d.sources, cache_dir=d.cache_dir, epoch_size=d.epoch_size,
                            pin_memory=d.pin_memory, prefetch_factor=d.prefetch_factor)


def resolve_batch(cfg: RunConfig, layout: Layout) -> int:
    """Derives parallel.grad_accum from train.global_batch for this world (hydra-pretrain did
    so before launch; a direct train(cfg) call gets the same check) and logs the global batch."""
    from hydra_dist.config import ConfigError
    from hydra_dist.config.schema import resolve_global_batch
    errs = resolve_global_batch(cfg, layout.world)
    if errs:
        raise ConfigError("\n".join(f"{k}: {why}" for k, why in errs))
    p = cfg.parallel
    gb = p.micro_batch_size * p.grad_accum * layout.dp
    log.info("global batch %d samples per step = micro_batch_size %d x grad_accum %d x dp %d%s",
             gb, p.micro_batch_size, p.grad_accum, layout.dp,
             " (train.global_batch)" if cfg.train.global_batch else "")
    return gb


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                       stderr=subprocess.DEVNULL, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def make_tracker(cfg: RunConfig, run_dir: Path, layout: Layout, run_id):
    if not (cfg.tracking.enabled and layout.holds_loss):
        return NullTracker()
    uri = resolve_uri(cfg.tracking.uri, run_dir)
    name = cfg.tracking.run_name or cfg.name
    if os.environ.get("SLURM_JOB_ID"):
        name = f"{name}-{os.environ['SLURM_JOB_ID']}"
    # Records the server could not take wait in the run folder (sent when it is back).
    tracker = MLflowTracker(uri, cfg.tracking.experiment, name, run_id,
                            spool_dir=str(run_dir / "mlflow_spool"))
    log.info("MLflow run %s at %s", tracker.run_id, uri)
    return tracker


def run_tags(cfg: RunConfig, layout: Layout) -> dict:
    return {"git_commit": git_commit(), "host": socket.gethostname(), "world_size": layout.world,
            "layout": f"tp{layout.tp}-pp{layout.pp}-dp{layout.dp}-zero{cfg.parallel.zero_stage}",
            "engine": cfg.parallel.engine, "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "stage": cfg.name, "global_batch": cfg.parallel.micro_batch_size *
            cfg.parallel.grad_accum * layout.dp, "grad_accum": cfg.parallel.grad_accum}


def write_resolved(cfg: RunConfig, run_dir: Path) -> Path:
    path = run_dir / "config.yaml"
    dump_yaml(cfg, path)
    return path


def build_model(cfg: RunConfig, layout: Layout):
    from hydra_dist.models.hydra import HydraModel
    # Same seed on every rank: megatron slices one master weight, so TP shards line up and
    # DP replicas start equal.
    torch.manual_seed(cfg.train.seed)
    model = HydraModel(cfg.model)
    from hydra_dist.checkpoint.init_weights import load_initial_weights
    load_initial_weights(model, cfg)   # no-op when model.init_from == ""; before ZeRO partitions
    if cfg.model.tokenizer_from:
        from hydra_dist.checkpoint.init_tokenizer import load_tokenizer_parts
        load_tokenizer_parts(model, cfg.model.tokenizer_from)
    model.set_activation_checkpointing(cfg.parallel.activation_checkpointing)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("model: %.2fM parameters (%.2fM trainable) on this TP rank", n_all / 1e6, n_train / 1e6)
    return model


def build_deepspeed_engine(model, cfg: RunConfig, layout: Layout):
    """The ZeRO engine (parallel/zero_engine.py) over DeepSpeed's, for the training loop."""
    from hydra_dist.parallel.deepspeed_engine import build_deepspeed
    from hydra_dist.parallel.zero_engine import ZeroEngine
    return ZeroEngine(build_deepspeed(model, cfg), cfg.parallel.micro_batch_size * layout.dp)


__all__ = ["build_deepspeed_engine", "build_loader", "build_model", "make_tracker", "prepare_data", "resolve_batch", "run_tags",
           "to_dict", "write_resolved"]
