"""The unified model (task: unified): next-token prediction on text and rectified flow in the
GSB latent space, one HydraModel (docs/design.md).

Loss normalisation: a step's NTP loss is the mean over every labelled token of the global batch
and its FM loss the (weighted) mean over every generation image, whatever each rank's mix. The
global counts are all-reduced before the step and handed to the model as count / (dp x ga):
DeepSpeed averages gradients over DP and megatron divides micro-batch losses by their number, so
either way the gradient is that of the exact global mean.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from hydra_dist.config import RunConfig
from hydra_dist.distributed.init import comm_tensor
from hydra_dist.distributed.phase import Phase
from hydra_dist.logs import fast_paths_line
from hydra_dist.models.llm import label_index
from hydra_dist.models.noise import step_noise_seed
from hydra_dist.ops.attention import resolve_attention
from hydra_dist.ops.gsb import resolve_impl
from hydra_dist.parallel.engine import StepSpec
from hydra_dist.parallel.megatron_engine import (build_megatron, compute_dtype, engine_device,
                                               schedule_config)

from ..run_setup import build_deepspeed_engine, build_loader, build_model

log = logging.getLogger("hydra_dist")


def loss_denominators(batches, dp_group, dp: int):
    """Global (labelled tokens, generation images, real tokens, token slots) of a step, over all
    micro-batches and DP ranks; returns (ntp_den, fm_den, counts) scaled so DP averaging yields
    the exact global per-token / per-image mean. The slots (rows x length, padding included)
    ride in the same all-reduce for the padding share."""
    counts = comm_tensor([sum(float(b["labels"].ge(0).sum()) for b in batches),
                          sum(float((b["is_gen"].float() * b["image_weight"]).sum()) for b in batches),
                          sum(float(b["segment_ids"].gt(0).sum()) for b in batches),
                          sum(float(b["segment_ids"].numel()) for b in batches)], group=dp_group)
    Phase.set("all_reduce of loss denominators")
    dist.all_reduce(counts, group=dp_group)
    counts = counts.cpu()
    ga = len(batches)
    return max(counts[0].item(), 1.0) / (dp * ga), max(counts[1].item(), 1.0) / (dp * ga), counts


def load_pretrained(chunks, m) -> None:
    """model.init_from (Qwen weights) and model.tokenizer_from (vision tower) into this rank's
    chunks: each takes the tensors it holds, TP-sliced; the source is checked against the whole
    model's names (built on the meta device), so a wrong source fails on every rank alike."""
    if not (m.init_from or m.tokenizer_from):
        return
    from hydra_dist.checkpoint.init_tokenizer import load_tokenizer_parts
    from hydra_dist.checkpoint.init_weights import load_initial_weights
    from hydra_dist.models.hydra import HydraModel
    rng = torch.get_rng_state()  # the meta build draws its init seed: leave the stream as it was
    with torch.device("meta"):
        names = [n for n, _ in HydraModel(m).named_parameters()]
    torch.set_rng_state(rng)
    for c in chunks:
        if m.init_from:
            load_initial_weights(c, m, names)
        if m.tokenizer_from and c.first:  # the vision tower lives on the first chunk only
            load_tokenizer_parts(c, m.tokenizer_from)


def build_stages(cfg: RunConfig, layout) -> list:
    """This rank's pipeline chunks, seeded exactly like HydraModel after torch.manual_seed(train.seed)."""
    from hydra_dist.models.hydra import init_base_seed
    from hydra_dist.models.layers import mp_config
    from hydra_dist.models.pipeline_stage import HydraStage
    p = cfg.parallel
    torch.manual_seed(cfg.train.seed)
    init_base = init_base_seed()
    sched, mp, n = schedule_config(cfg, cfg.model.llm), mp_config(), p.pp * p.virtual_pp
    chunks = [HydraStage(cfg.model, mp, v * p.pp + layout.pp_rank, n, init_base, sched, vp_stage=v)
              for v in range(p.virtual_pp)]
    load_pretrained(chunks, cfg.model)
    return chunks


class UnifiedTask:
    name = "unified"
    keys = ("loss", "ntp", "fm")
    log_names = {"loss": "loss", "ntp": "ntp_loss", "fm": "fm_loss"}

    def __init__(self, cfg: RunConfig):
        self.cfg, self.grid, self.probe, self.padding_share = cfg, None, None, 0.0

    def build_engine(self, layout):
        cfg = self.cfg
        if cfg.parallel.engine == "megatron":   # DP x TP x PP, megatron-core pipeline schedules
            return build_megatron(cfg, layout, build_stages(cfg, layout), engine_device(layout))
        return build_deepspeed_engine(build_model(cfg, layout), cfg, layout)   # DP x TP, ZeRO 0-3

    def fast_paths(self, device):
        m = self.cfg.model
        return fast_paths_line(resolve_attention(m.attention, compute_dtype(self.cfg)),
                               resolve_impl(m.gsb.kernel, device), device)

    def build_loader(self, data_path, layout, state):
        return build_loader(self.cfg, data_path, layout, state)

    def prepare_step(self, batches, step, layout):
        cfg = self.cfg
        ntp_den, fm_den, counts = loss_denominators(batches, ps.get_data_parallel_group(), layout.dp)
        seed = step_noise_seed(cfg.train.seed, step)
        kw = {"noise_seed": seed, "ntp_den": ntp_den, "fm_den": fm_den}
        real, slots = float(counts[2]), float(counts[3])
        spec = StepSpec(self.keys, tokens=real, stage_kwargs=kw)
        self.padding_share = 1.0 - real / max(slots, 1.0)
        megatron = cfg.parallel.engine == "megatron"
        if megatron:
            from hydra_dist.models.pipeline_stage import pad_rows, payload_rows
            batches = [pad_rows(b, cfg.parallel.micro_batch_size) for b in batches]
            S = batches[0]["input_ids"].shape[1]
            if any(b["input_ids"].shape[1] != S for b in batches):
                raise ValueError("micro-batches of one step differ in length: the pipeline needs "
                                 "fixed shapes (data.pack_tokens=0)")
            spec.seq_length = S + payload_rows(cfg.model)
        # where the LM head runs, found here on the CPU (not on the device: a host sync)
        batches = [{**b, "label_index": label_index(b["labels"])} for b in batches]
        if not megatron:
            def micro_loss(model, batch):
                out = model(batch, **kw)
                return out["loss"], {"ntp": out["ntp"], "fm": out["fm"]}
            spec.micro_loss = micro_loss
        return batches, spec

    def after_step(self, skipped, layout):
        # token slots that held padding (the MFU counts real tokens only; docs/performance.md)
        return {"padding_share": self.padding_share}

    def on_start(self, engine, layout, tracker, fresh):
        cfg = self.cfg
        if not cfg.train.eval_every:
            return
        if cfg.parallel.engine != "deepspeed":  # the sampler needs the whole model in one place
            log.info("train.eval_every: no held-out captions or sample grids on the megatron "
                     "engine (evaluate a checkpoint with hydra-eval-shapes / hydra-generate, "
                     "which read its shards)")
            return
        from hydra_dist.data.tokenizer import load_tokenizer

        from ..evaluation import SampleGrid, ShapesProbe
        tok = load_tokenizer(cfg.data.tokenizer)
        self.grid = SampleGrid(cfg, tok) if cfg.model.tokenizer_from else None
        self.probe = ShapesProbe(cfg, tok, self.grid.tok_model if self.grid else None)

    def evaluate(self, engine, step, layout, tracker):
        every = self.cfg.train.eval_every
        if self.probe is None or not (step % every == 0 or step == self.cfg.train.steps):
            return
        Phase.set("held-out evaluation")
        acc, captions = self.probe.run(engine.module)
        if self.grid is not None:
            imgs = self.grid.images(engine.module)
        if not layout.holds_loss:
            return
        tracker.log_metrics({f"eval/{k}": v for k, v in acc.items() if k.endswith("_acc")}, step)
        out = Path(self.cfg.output_dir) / "samples" / f"captions_step{step:08d}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(captions, indent=1))
        tracker.log_artifact(str(out), "samples")
        log.info("held-out step %d: %s; e.g. %r (truth %r)", step,
                 " ".join(f"{k} {v:.2f}" for k, v in acc.items() if k.endswith("_acc")),
                 captions[0]["caption"], captions[0]["truth"])
        if self.grid is not None:
            tracker.log_image_grid(imgs, "generated", step)

    def on_finish(self, engine, run_dir, step, layout, tracker, finished):
        return {}

    def extra_state(self):
        return None

    def load_extra_state(self, extra):
        pass

    def tags(self):
        return {}

    def log_line(self, m):
        return f"ntp {m['ntp_loss']:.4f} fm {m['fm_loss']:.4f}"
