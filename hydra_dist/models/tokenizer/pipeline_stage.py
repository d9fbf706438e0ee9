"""One pipeline stage of HYDRA-TOK (stage-1 objective: flow matching + GSB regulariser +
semantic self-distillation) for the megatron engine.

Split over pp stages: the pixel decoder's blocks are divided evenly (tokenizer.decoder.num_layers
% pp == 0); stage 0 also holds the whole encoder (patch, Gen-ViT, GSB, Sem-ViT, sem_cls), the
frozen teacher and the decoder's input side (inp, cond, pos, time); the last stage holds the
decoder's output side (final_norm, final_mod, out) and computes L_FM.

What travels between stages (megatron's (seq, micro_batch, hidden) shape, hidden = decoder width D):
  rows [0, N)  the decoder tokens [N, B, D]
  row  N       the timestep conditioning c = time(t) [B, D] (every block needs it; its gradient
               flows back to `time` on stage 0)
  row  N + 1   the payload: element 0 is w_reg L_reg + w_dist L_dist of this micro-batch, still
               in the graph, so the last stage adds it to the loss and its gradient reaches the
               encoder through the pipeline exactly; elements 1..4 are reg, dist, kl, cos (detached,
               for logging); under bf16 each travels as a (hi, lo) pair (split_fp32), ~fp32.
The FM target eps - x needs no payload: every stage gets the micro-batch (the images) and draws
eps from (noise_seed + 1, sample_id), as HydraTok.forward does.

Weights: every stage is cut from the whole HydraTok the tokenizer task builds (train/tasks/
tokenizer.py build_parts: HydraTok and the teacher under
torch.manual_seed(train.seed), the single-process code path) and keeps only its pieces, so each
stage starts from exactly the single-process weights and parameter names (`decoder.blocks.3.*`).
The price is a transient full construction per rank (446M parameters at paper shape, ~1.8 GB
fp32 of CPU memory for a moment); per-piece seeding would avoid it but change HydraTok's init.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..partition import chunk_layers
from .decoder import modulate, patchify, unpatchify
from .losses import distill_loss
from .model import HydraTok

LOG_KEYS = ("reg", "dist", "kl", "cos")


def seq_length(cfg) -> int:
    """Rows of the tensor sent between stages: N patch tokens + c + the payload row."""
    v = cfg.model.vit
    return (v.image_size // v.patch_size) ** 2 + 2


def split_fp32(v, dtype):
    """fp32 values as (hi, lo) pairs in the activation dtype, so that a bf16 pipeline carries
    them to ~16 mantissa bits (hi + lo); the gradient of hi + lo w.r.t. v stays exactly 1."""
    if dtype == torch.float32:
        return torch.cat([v, torch.zeros_like(v)])
    hi = v.to(dtype)
    return torch.cat([hi, (v - hi.float()).to(dtype)])


def unsplit_fp32(pairs):
    n = pairs.numel() // 2
    return pairs[:n].float() + pairs[n:].float()


class TokStage(nn.Module):
    """Stage `stage` of `pp`, cut out of a fully built HydraTok (`model`); megatron's schedules
    call set_input_tensor then forward."""

    metric_keys = ("loss", "fm") + LOG_KEYS

    def __init__(self, cfg, model: HydraTok, teacher, stage: int, pp: int, schedule_config=None):
        super().__init__()
        from megatron.core.enums import ModelType
        self.config, self.model_type, self.vp_stage = schedule_config, ModelType.encoder_or_decoder, None
        self.cfg, self.tok_cfg, self.vit_cfg, self.cls = cfg, model.tok_cfg, model.vit_cfg, model.cls
        self.chunk, self.first, self.last = stage, stage == 0, stage == pp - 1
        w = cfg.tokenizer.weights
        self.semantic_on = cfg.tokenizer.stage == 1 and w.dist > 0
        if self.first:
            self.patch, self.gen_vit, self.gsb = model.patch, model.gen_vit, model.gsb
            self.sem_cls, self.sem_vit = model.sem_cls, model.sem_vit
        # the teacher is frozen and outside the optimizer and the checkpoint: not a submodule
        self.__dict__["teacher"] = teacher if self.first else None
        dec, self.decoder = model.decoder, nn.Module()
        # megatron's schedules take any `.decoder` for a TransformerBlock and tag its `.layers`
        # with the micro-batch id; ours has none to tag (a plain tuple, not a submodule)
        self.decoder.layers = ()
        self.p, self.size = dec.p, dec.size
        if self.first:
            self.decoder.inp, self.decoder.cond, self.decoder.time = dec.inp, dec.cond, dec.time
            self.decoder.pos = dec.pos
        self.block_ids = chunk_layers(len(dec.blocks), stage, pp)
        self.decoder.blocks = nn.ModuleDict({str(i): dec.blocks[i] for i in self.block_ids})
        if self.last:
            self.decoder.final_norm, self.decoder.final_mod = dec.final_norm, dec.final_mod
            self.decoder.out = dec.out
        self.checkpointing = dec.checkpointing
        self.input_tensor = None

    # HydraTok's pieces, reused as they are (same code path, same numbers)
    encode = HydraTok.encode
    semantic = HydraTok.semantic
    flow_noise = HydraTok.flow_noise
    encode_for_decoder = HydraTok.encode_for_decoder

    def part_modules(self) -> dict:
        return {"all": [self]}  # HydraTok has one optimizer part (param_groups' "all")

    def set_input_tensor(self, tensors) -> None:
        self.input_tensor = tensors[0] if isinstance(tensors, (list, tuple)) else tensors

    def move_teacher(self, device) -> None:
        if self.teacher is not None:
            self.teacher.to(device)

    # --- one micro-batch ---------------------------------------------------------------------
    def forward(self, batch: dict, noise_seed: int = 0):
        """Not the last stage: the [N + 2, B, D] tensor for the next one. The last: the loss
        and its parts (HydraTok.forward + TokenizerObjective.generator for stage 1)."""
        images = batch["images"]
        if self.first:
            x, c, payload = self._encode(batch, noise_seed)
        else:
            N = self.input_tensor.shape[0] - 2
            x, c, payload = (self.input_tensor[:N].transpose(0, 1), self.input_tensor[N],
                             self.input_tensor[N + 1])
        for blk in self.decoder.blocks.values():
            if self.checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, c, use_reentrant=False)
            else:
                x = blk(x, c)
        if not self.last:
            return torch.cat([x.transpose(0, 1), c[None], payload[None]], dim=0)
        d = self.decoder
        shift, scale = d.final_mod(F.silu(c))[:, None].chunk(2, dim=-1)
        v_pred = unpatchify(d.out(modulate(d.final_norm(x), shift, scale)), self.p, self.size)
        x0 = images.float()   # the flow target eps - x in fp32 whatever the compute dtype
        t, eps = self.flow_noise(batch["sample_ids"], noise_seed + 1, x0)
        l_fm = (v_pred.float() - (eps - x0)).pow(2).mean()
        flat = payload.reshape(-1)
        vals = unsplit_fp32(flat[:2 * (1 + len(LOG_KEYS))])
        loss = self.cfg.tokenizer.weights.fm * l_fm + vals[0]
        return {"loss": loss, "fm": l_fm.detach(),
                **{k: vals[1 + i].detach() for i, k in enumerate(LOG_KEYS)}}

    def _encode(self, batch, noise_seed):
        """HydraTok.forward up to the decoder blocks, plus the regulariser/distillation payload."""
        w = self.cfg.tokenizer.weights
        _, e = self.encode_for_decoder(batch, noise_seed, self.semantic_on)
        gen_hidden, sem_hidden, z, t, x_t = e["gen_hidden"], e["sem_hidden"], e["z"], e["t"], e["x_t"]
        l_reg, l_kl, l_cos = e["reg"], e["kl"], e["cos"]
        d = self.decoder
        c = d.time(t)
        h = d.inp(patchify(x_t, self.p)) + d.cond(z) + d.pos
        l_dist = l_reg.new_zeros(())
        if w.dist > 0:
            l_dist, _ = distill_loss(gen_hidden + sem_hidden, self.teacher(batch["images"]),
                                     self.cfg.tokenizer.distill_layers, self.cls)
        extra = w.reg * l_reg + w.dist * l_dist
        vals = split_fp32(torch.stack([extra.float(), l_reg.detach().float(), l_dist.detach().float(),
                                       l_kl.detach().float(), l_cos.detach().float()]), h.dtype)
        B, D = c.shape
        if B * D < vals.numel():
            raise ValueError("tokenizer.decoder.hidden_size * parallel.micro_batch_size must be "
                             f">= {vals.numel()} to carry the loss payload")
        payload = F.pad(vals, (0, B * D - vals.numel())).reshape(B, D)
        return h, c, payload


def build_tok_stages(cfg, layout, schedule_config, model: HydraTok, teacher):
    """This rank's stage cut out of the whole tokenizer (and teacher) the task built with the
    single-process weights (see the module docstring)."""
    return [TokStage(cfg, model, teacher, layout.pp_rank, cfg.parallel.pp, schedule_config)]


def gather_whole(engine, cfg) -> HydraTok:
    """A whole HydraTok on every rank from the pipeline stages' weights (a collective over the
    pipeline group; tp = 1, so each stage holds full tensors): for tokenizer.pt and the
    held-out reconstruction, which need the encoder and the decoder together."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    mine = {k: v.detach().cpu() for k, v in engine.model.chunks[0].named_parameters()}
    everyone = [None] * ps.get_pipeline_model_parallel_world_size()
    dist.all_gather_object(everyone, mine, group=ps.get_pipeline_model_parallel_group())
    full = {k: v for part in everyone for k, v in part.items()}
    with torch.random.fork_rng(devices=[]):  # HydraTok's init must not move the run's RNG
        model = HydraTok(cfg)
    from .weights import load_full
    load_full(model, full, strict=True, where="pipeline stages")
    return model.to(engine.device)
