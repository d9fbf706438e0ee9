"""Per-GPU memory model: parameter counts per part, model state under ZeRO 0-3 x TP, and
activations with and without checkpointing (docs/performance.md).

Model state per trainable parameter (bytes): bf16 params 2, grads 2, optimizer 12 (fp32 master
4 + Adam moments 8) — the ZeRO paper's K = 12; fp32 runs: 4 / 4 / 12 (DeepSpeed keeps an fp32
partition next to the parameter partition even in fp32). Frozen parameters: the parameter only.
ZeRO stage s partitions over DP: s >= 1 the optimizer, s >= 2 the gradients, s = 3 the
parameters (frozen ones too). Megatron TP layers hold 1/tp of their weights; norms, biases of
row-parallel layers, the GSB, patch embedding and flow head are replicated.
"""
from __future__ import annotations

from dataclasses import dataclass

from .flops import attention_pairs  # noqa: F401  (re-exported for callers of the planner)


@dataclass
class Count:
    sharded: float = 0.0      # split over TP ranks
    replicated: float = 0.0   # full copy on each TP rank

    def per_rank(self, tp: int) -> float:
        return self.sharded / tp + self.replicated

    @property
    def total(self) -> float:
        return self.sharded + self.replicated

    def __iadd__(self, o):
        self.sharded += o.sharded
        self.replicated += o.replicated
        return self


def _vit_block(v) -> Count:
    D, F = v.hidden_size, v.mlp_size
    norm = (2 if v.norm_type == "layer_norm" else 1) * D
    c = Count(sharded=3 * D * D + (3 * D if v.qkv_bias else 0) + D * D + D * F + F + F * D,
              replicated=2 * norm + D + D)   # o and fc2 biases are replicated (row-parallel)
    if v.qk_norm:
        c.sharded += 2 * D
    if v.layer_scale_init > 0:
        c.replicated += 2 * D
    return c


def param_counts(model_cfg) -> dict:
    """Parameters per trainable part of HydraModel (exact; tests compare with the built model)."""
    v, g, c, h = model_cfg.vit, model_cfg.gsb, model_cfg.llm, model_cfg.head
    D, C, H = v.hidden_size, g.latent_channels, c.hidden_size
    n_patch = (v.image_size // v.patch_size) ** 2
    patch = Count(replicated=3 * v.patch_size ** 2 * D + D + n_patch * D + (2 * D if v.use_cls_token else 0))
    blk = _vit_block(v)
    gen = Count(patch.sharded + blk.sharded * v.gen_layers, patch.replicated + blk.replicated * v.gen_layers)
    sem = Count(blk.sharded * v.sem_layers, blk.replicated * v.sem_layers + (D if v.use_cls_token else 0))
    gsb = Count(replicated=D * 2 * C + 2 * C + C * D + D)
    k = D * h.merge ** 2
    proj = Count(sharded=k * H + H + H * H, replicated=2 * k + H)
    hd = H // c.num_heads
    kv = c.num_kv_heads * hd
    layer = Count(sharded=H * H + H + 2 * (H * kv + kv) + H * H + 3 * H * c.ffn_size, replicated=2 * H)
    llm = Count(sharded=layer.sharded * c.num_layers + c.vocab_size * H * (1 if c.tie_word_embeddings else 2),
                replicated=layer.replicated * c.num_layers + H)
    F, te, o = h.flow_head_hidden, h.time_embed_dim, h.merge ** 2 * C
    fh = Count(replicated=H * H + H + te * H + H + H * H + H +
               h.flow_head_layers * (H * F + F + F * H + H + H * 3 * H + 3 * H) + H * 2 * H + 2 * H + H * o + o +
               (o * H + H if h.latent_skip else 0))
    return {"gen_vit": gen, "gsb": gsb, "sem_vit": sem, "projector": proj, "llm": llm, "flow_head": fh}


def model_state_bytes(cfg, dp: int, zero_stage: int | None = None, tp: int | None = None,
                      precision: str | None = None) -> dict:
    """Bytes per rank of parameters, gradients and optimizer state."""
    p = cfg.parallel
    zero = p.zero_stage if zero_stage is None else zero_stage
    tp = p.tp if tp is None else tp
    prec = p.precision if precision is None else precision
    counts = param_counts(cfg.model)
    frozen = set(cfg.model.freeze)
    train = sum(c.per_rank(tp) for k, c in counts.items() if k not in frozen)
    allp = sum(c.per_rank(tp) for c in counts.values())
    pb, gb, ob = (2, 2, 12) if prec == "bf16" else (4, 4, 12)
    if zero == 0:
        ob = 8 if prec != "bf16" else 12   # torch AdamW on fp32 params: the moments only
    return {"params": allp * pb / (dp if zero >= 3 else 1),
            "grads": train * gb / (dp if zero >= 2 else 1),
            "optimizer": train * ob / (dp if zero >= 1 else 1)}


# --- activations -------------------------------------------------------------------------------
@dataclass
class Shape:
    """One micro-batch as the planner sees it: R rows of S tokens, I images."""
    rows: int
    seq: int
    images: int
    pairs: float          # allowed (query, key) pairs of the LLM mask
    labelled: int | None = None   # positions with a label: where the LM head runs (None: all)

    @property
    def tokens(self) -> int:
        return self.rows * self.seq


def shape_of_batch(batch) -> Shape:
    from .flops import attention_pairs as pairs
    R, S = batch["input_ids"].shape
    labelled = int(batch["labels"].ge(0).sum()) if "labels" in batch else None
    return Shape(int(R), int(S), int(batch["images"].shape[0]),
                 pairs(batch["segment_ids"], batch["image_ids"]), labelled)


def shape_of_config(cfg) -> Shape:
    """The configured micro-batch: one image sample of max length per sample (caption layout),
    packed rows when data.pack_tokens is set."""
    v, d, mb = cfg.model.vit, cfg.data, cfg.parallel.micro_batch_size
    n_vis = ((v.image_size // v.patch_size) // cfg.model.head.merge) ** 2
    L = 1 + n_vis + d.max_text_tokens + 1
    per_row = max(1, d.pack_tokens // L) if d.pack_tokens else 1
    S = d.pack_tokens or L
    rows = -(-mb // per_row)
    pairs = mb * (L * (L + 1) / 2 + n_vis * (n_vis - 1) / 2)
    # at most every caption token and its EOS carry a label (understanding samples)
    return Shape(rows, S, mb, pairs, mb * (d.max_text_tokens + 1))


def activation_bytes(cfg, shape: Shape, checkpointing: bool | None = None, tp: int | None = None,
                     precision: str | None = None, attention: str | None = None) -> dict:
    """Bytes autograd saves for backward in one micro-batch's forward, per part. Coefficients
    (floats per token and layer) follow what the layers save (calibrated against
    hydra_dist.perf.saved on CPU; tests/perf/test_memory.py). bf16: 2-byte activations, but the
    RMSNorm fp32 copies and the fp32 softmax of the loss stay 4 bytes. checkpointed stacks keep
    their layer inputs, plus one layer's activations while it is recomputed (`recompute_peak`)."""
    m, p = cfg.model, cfg.parallel
    ckpt = p.activation_checkpointing if checkpointing is None else checkpointing
    tp = p.tp if tp is None else tp
    e = 2 if (precision or p.precision) == "bf16" else 4
    flash = (attention or m.attention) in ("flash", "emulated") or \
        ((attention or m.attention) == "auto" and e == 2)
    v, c, h, g = m.vit, m.llm, m.head, m.gsb
    N = (v.image_size // v.patch_size) ** 2 + int(v.use_cls_token)
    D, Fv, hv = v.hidden_size, v.mlp_size, v.num_heads
    frozen = set(m.freeze)
    out, peak = {}, 0.0

    def vit(layers: int) -> float:
        nonlocal peak
        per = (4 * D + (4 * D + 2 * Fv + hv) / tp + 4) * e * shape.images * N
        peak = max(peak, per)
        return layers * (D * e * shape.images * N if ckpt else per)

    if "gen_vit" not in frozen and "gsb" not in frozen:
        out["gen_vit"] = vit(v.gen_layers)
    if not {"gsb", "sem_vit"} <= frozen:
        out["sem_vit"] = vit(v.sem_layers)
    T, H, F = shape.tokens, c.hidden_size, c.ffn_size
    a, gd = c.num_heads, c.num_kv_heads * (H // c.num_heads)
    M = shape.images * (v.image_size // v.patch_size // h.merge) ** 2
    k = D * h.merge ** 2
    out["projector"] = M * (2 * k + 2 * H / tp + 2) * e
    norm_extra = 0 if e == 4 else 4 * H * (4 - e) / e   # fp32 copies inside RMSNorm (bf16 runs)
    attn = (3 * H + 4 * gd) if flash else (5 * H + 2 * gd)
    layer = T * ((4 * H + norm_extra) * e + ((attn + 2 * a + 4 * F) / tp) * e)
    peak = max(peak, layer)
    shared = T * (2 * (H // c.num_heads) * e + (2 * H + 1) * 4) + (0 if flash else shape.rows * shape.seq ** 2)
    out["llm"] = shared + c.num_layers * (T * H * e if ckpt else layer)
    T_head = T if shape.labelled is None else shape.labelled   # the head runs on labelled rows
    out["lm_head"] = T_head * (H * e + c.vocab_size / tp * (4 if e == 4 else 6) + 16)
    Fh, o = h.flow_head_hidden, h.merge ** 2 * g.latent_channels
    out["flow_head"] = M * (H + h.flow_head_layers * (4 * H + 2 * Fh + 2) + 3 * H + 2 + 2 * o) * e
    out["recompute_peak"] = peak if ckpt else 0.0
    return out
