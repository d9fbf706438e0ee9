"""FLOPs of one training micro-batch, part by part, forward and backward (docs/performance.md).

Counted: matrix multiplies (2 m n k) and convolutions, as FlopCounterMode and the usual MFU
convention count them; norms, activations and losses are left out (a few % on tiny shapes,
<0.5% at 1.5B). Backward per part:
  trainable                          2 x forward (input grad + weight grad)
  frozen, gradients flow through it  1 x forward (input grad only: the "useful" work)
  frozen, nothing upstream trains    0 (it runs under no_grad or outside the graph)
A linear whose input carries no gradient has no input grad: 1 x (torch nn.Linear skips it;
megatron's linear computes it anyway, which we leave out as wasted work).
LLM attention is counted from the batch's real layout: causal pairs inside each packed sample
plus the extra (bidirectional) pairs inside each image block; `attention="dense"` counts the
full S x S per row instead (what the reference SDPA path computes, and what the FLOP counter sees).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

PART_ORDER = ("gen_vit", "gsb", "sem_vit", "projector", "llm", "lm_head", "flow_head")


@dataclass
class PartFlops:
    fwd: float = 0.0
    bwd: float = 0.0

    @property
    def total(self) -> float:
        return self.fwd + self.bwd


@dataclass
class FlopsReport:
    parts: Dict[str, PartFlops] = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def add(self, name: str, fwd: float, bwd: float) -> None:
        p = self.parts.setdefault(name, PartFlops())
        p.fwd += fwd
        p.bwd += bwd

    @property
    def fwd(self) -> float:
        return sum(p.fwd for p in self.parts.values())

    @property
    def bwd(self) -> float:
        return sum(p.bwd for p in self.parts.values())

    @property
    def total(self) -> float:
        return self.fwd + self.bwd


def lin(n: float, d_in: int, d_out: int) -> float:
    return 2.0 * n * d_in * d_out


def _bwd(fwd: float, trainable: bool, live_in: bool, first_fwd: float = 0.0) -> float:
    """Backward FLOPs of a block of linears; first_fwd: the part of `fwd` whose input may carry
    no gradient (it then has a weight grad only)."""
    if trainable:
        return 2.0 * fwd - (0.0 if live_in else first_fwd)
    return fwd if live_in else 0.0


# --- building blocks (forward FLOPs) -------------------------------------------------------
def vit_block_fwd(v, n_img: int, tokens: int) -> float:
    """One ViT block on n_img images of `tokens` tokens: q, k, v, o, bidirectional attention, MLP."""
    n, D = n_img * tokens, v.hidden_size
    return 4 * lin(n, D, D) + 4.0 * n_img * tokens * tokens * D + lin(n, D, v.mlp_size) + \
        lin(n, v.mlp_size, D)


def llm_layer_linear_fwd(c, tokens: float) -> float:
    hd = c.hidden_size // c.num_heads
    H, kv = c.hidden_size, c.num_kv_heads * hd
    return lin(tokens, H, H) * 2 + lin(tokens, H, kv) * 2 + 3 * lin(tokens, H, c.ffn_size)


def llm_attention_fwd(c, pairs: float) -> float:
    """QK^T and PV over `pairs` (query, key) pairs, all heads."""
    return 4.0 * pairs * c.hidden_size


def attention_pairs(segment_ids_BS, image_ids_BS) -> float:
    """(query, key) pairs the HYDRA mask allows: per packed sample L(L+1)/2 causal pairs, plus
    n(n-1)/2 for each image block of n tokens (bidirectional inside the image)."""
    import torch
    R, S = segment_ids_BS.shape
    row = torch.arange(R, device=segment_ids_BS.device)[:, None] * (S + 1)
    seg = segment_ids_BS.long()
    L = torch.bincount((row + seg)[seg > 0]).double()
    img = image_ids_BS.long()
    n = torch.bincount((row + img)[img > 0]).double()
    return float((L * (L + 1) / 2).sum() + (n * (n - 1) / 2).sum())


def conv_fwd(n_img: int, c_in: int, c_out: int, k: int, h_out: int, w_out: int) -> float:
    return 2.0 * n_img * c_in * c_out * k * k * h_out * w_out


# --- the unified model ---------------------------------------------------------------------
def unified_flops(cfg, batch: dict, attention: str = "layout") -> FlopsReport:
    """Forward and backward FLOPs of HydraModel.forward + backward on one micro-batch.
    cfg: RunConfig or ModelConfig. batch: the collator's dict (only shapes and the layout
    tensors segment_ids / image_ids / labels are read).
    attention="layout" (MFU): the useful work only: real tokens (padding positions excluded:
    the trainer reports their share as padding_share) and the mask's allowed pairs.
    attention="dense": what the reference path computes, padding and R x S^2 pairs included."""
    R, S = (int(x) for x in batch["input_ids"].shape)
    if attention == "dense":
        pairs, tokens = float(R * S * S), None
    else:
        pairs = attention_pairs(batch["segment_ids"], batch["image_ids"])
        tokens = int(batch["segment_ids"].gt(0).sum())
    # the LM head runs on labelled positions only (models/llm.py ntp_loss)
    head_rows = int(batch["labels"].ge(0).sum()) if "labels" in batch else None
    return unified_flops_of_shape(cfg, int(batch["images"].shape[0]), R, S, pairs, head_rows, tokens)


def unified_flops_of_shape(cfg, I: int, R: int, S: int, pairs: float,
                           head_rows: int | None = None, tokens: int | None = None) -> FlopsReport:
    """unified_flops from the shape alone: I images, R rows of S tokens, `pairs` attention pairs,
    `head_rows` positions with a label (the LM head's rows; None: all R x S, an upper bound),
    `tokens` real (non-padding) tokens the LLM's linear layers count (None: all R x S)."""
    m = getattr(cfg, "model", cfg)
    v, g, c, h = m.vit, m.gsb, m.llm, m.head
    frozen = set(m.freeze)
    tr = {p: p not in frozen for p in ("gen_vit", "gsb", "sem_vit", "projector", "llm", "flow_head")}
    grid = v.image_size // v.patch_size
    N, D, C = grid * grid, v.hidden_size, g.latent_channels
    cls = int(v.use_cls_token)  # the ViT blocks see N + 1 tokens; GSB and projector N
    M = (grid // h.merge) ** 2
    rep = FlopsReport()

    # Gen-ViT (+ patch embed) and GSB encode: mu is detached when the GSB is frozen, so the
    # encoder only sees a backward when the GSB trains.
    enc_grad = tr["gsb"]
    patch = lin(I * N, 3 * v.patch_size ** 2, D)
    blocks = v.gen_layers * vit_block_fwd(v, I, N + cls)
    gen_live = tr["gen_vit"] and enc_grad
    rep.add("gen_vit", patch + blocks, (patch + 2 * blocks) if gen_live else 0.0)
    enc = lin(I * N, D, 2 * C)
    rep.add("gsb", enc, _bwd(enc, tr["gsb"], gen_live) if enc_grad else 0.0)
    # GSB decode (un-project) -> Sem-ViT -> projector -> LLM: gradient "liveness" runs forward.
    live = tr["gsb"]
    dec = lin(I * N, C, D)
    rep.add("gsb", dec, _bwd(dec, tr["gsb"], live, dec))
    live = live or tr["gsb"]
    sem = v.sem_layers * vit_block_fwd(v, I, N + cls)
    rep.add("sem_vit", sem, _bwd(sem, tr["sem_vit"], live))
    live = live or tr["sem_vit"]
    proj = lin(I * M, D * h.merge ** 2, c.hidden_size) + lin(I * M, c.hidden_size, c.hidden_size)
    rep.add("projector", proj, _bwd(proj, tr["projector"], live))
    live = live or tr["projector"]
    T = R * S if tokens is None else tokens
    llm = c.num_layers * (llm_layer_linear_fwd(c, T) + llm_attention_fwd(c, pairs))
    # embeddings are a lookup (no FLOPs), and with an LLM that trains they make the input live
    rep.add("llm", llm, _bwd(llm, tr["llm"], live or tr["llm"]))
    live = live or tr["llm"]
    head = lin(T if head_rows is None else head_rows, c.hidden_size, c.vocab_size)
    head_tr = tr["llm"]
    rep.add("lm_head", head, _bwd(head, head_tr, live))
    # flow head: per-token MLPs on I x M visual positions, per-image modulation
    H, F_, te = c.hidden_size, h.flow_head_hidden, h.time_embed_dim
    tok = lin(I * M, H, H) + h.flow_head_layers * (lin(I * M, H, F_) + lin(I * M, F_, H)) + \
        lin(I * M, H, h.merge ** 2 * C) + (lin(I * M, h.merge ** 2 * C, H) if h.latent_skip else 0.0)
    time_first = lin(I, te, H)
    per_img = time_first + lin(I, H, H) + h.flow_head_layers * lin(I, H, 3 * H) + lin(I, H, 2 * H)
    fh = tok + per_img
    rep.add("flow_head", fh, _bwd(fh, tr["flow_head"], live, 0.0) -
            (time_first if tr["flow_head"] else 0.0))
    return rep


# --- the tokenizer ---------------------------------------------------------------------------
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
ALEX = [(64, 11, 4, 2), "P", (192, 5, 1, 2), "P", (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)]


def lpips_trunk_fwd(net: str, n_img: int, size: int) -> float:
    """Forward FLOPs of the LPIPS trunk up to its last tap (+ the 1x1 linear heads)."""
    from hydra_dist.models.tokenizer.lpips import MIN_SIZE
    size = max(size, MIN_SIZE[net])   # what LPIPS.taps_of runs the trunk at
    total, c_prev, s = 0.0, 3, size
    if net == "vgg":
        for x in VGG16:
            if x == "M":
                s //= 2
            else:
                total += conv_fwd(n_img, c_prev, x, 3, s, s) + conv_fwd(n_img, x, 1, 1, s, s)
                c_prev = x
        return total
    for x in ALEX:
        if x == "P":
            s = (s - 3) // 2 + 1
        else:
            co, k, st, p = x
            s = (s + 2 * p - k) // st + 1
            total += conv_fwd(n_img, c_prev, co, k, s, s) + conv_fwd(n_img, co, 1, 1, s, s)
            c_prev = co
    return total


def discriminator_fwd(gan, n_img: int, size: int) -> tuple[float, float]:
    """(total forward FLOPs, forward FLOPs of the first conv) of the patch discriminator."""
    total, c_prev, s, first = 0.0, 3, size, 0.0
    for n in range(gan.num_layers):
        c = gan.channels * min(2 ** n, 8)
        s = (s + 2 - 4) // 2 + 1
        f = conv_fwd(n_img, c_prev, c, 4, s, s)
        first = first or f
        total += f
        c_prev = c
    return total + conv_fwd(n_img, c_prev, 1, 3, s, s), first


def tokenizer_flops(cfg, batch_size: int, gan_on: bool = True) -> FlopsReport:
    """HYDRA-TOK step (train/tasks/tokenizer.py): student forward/backward, frozen teacher forward,
    LPIPS and discriminator by the configured loss weights."""
    v, g, t = cfg.model.vit, cfg.model.gsb, cfg.tokenizer
    w, B = t.weights, batch_size
    grid = v.image_size // v.patch_size
    N, D, C, cls = grid * grid, v.hidden_size, g.latent_channels, int(v.use_cls_token)
    enc_tr = t.stage == 1
    rep = FlopsReport()
    patch = lin(B * N, 3 * v.patch_size ** 2, D)
    gen = v.gen_layers * vit_block_fwd(v, B, N + cls)
    rep.add("gen_vit", patch + gen, (patch + 2 * gen) if enc_tr else 0.0)
    gsb = lin(B * N, D, 2 * C) + lin(B * N, C, D)
    rep.add("gsb", gsb, 2 * gsb if enc_tr else 0.0)
    if enc_tr and w.dist > 0:
        sem = v.sem_layers * vit_block_fwd(v, B, N + cls)
        rep.add("sem_vit", sem, 2 * sem)
    d = t.decoder
    Dd = d.hidden_size
    inp = lin(B * N, 3 * v.patch_size ** 2, Dd)
    body = lin(B * N, C, Dd) + d.num_layers * (4 * lin(B * N, Dd, Dd) + 4.0 * B * N * N * Dd +
                                               lin(B * N, Dd, d.mlp_size) + lin(B * N, d.mlp_size, Dd)) \
        + lin(B * N, Dd, 3 * v.patch_size ** 2)
    per_img = lin(B, d.time_embed_dim, Dd) + lin(B, Dd, Dd) + d.num_layers * lin(B, Dd, 6 * Dd) + \
        lin(B, Dd, 2 * Dd)
    dec = inp + body + per_img
    rep.add("pixel_decoder", dec, 2 * dec - inp - lin(B, d.time_embed_dim, Dd))
    if w.dist > 0 and enc_tr:
        teach = lin(B * N, 3 * v.patch_size ** 2, D) + (v.gen_layers + v.sem_layers) * vit_block_fwd(v, B, N + cls)
        rep.add("teacher", teach, 0.0)
    if w.lpips > 0:
        one = lpips_trunk_fwd(t.lpips.net, B, v.image_size)
        rep.add("lpips", 2 * one, one)   # prediction and target; input grad of the prediction's
    if w.gan > 0 and gan_on:
        f, first = discriminator_fwd(t.gan, B, v.image_size)
        rep.add("discriminator", f, f)               # generator loss: input grad only
        rep.add("discriminator", 2 * f, 2 * (2 * f - first))  # D step on real and fake
    return rep


def flops_report(cfg, batch: dict, attention: str = "layout") -> FlopsReport:
    if getattr(cfg, "task", "unified") == "tokenizer":
        return tokenizer_flops(cfg, int(batch["images"].shape[0]))
    return unified_flops(cfg, batch, attention)


def step_flops(cfg, batch: dict) -> float:
    """Forward + backward FLOPs of one micro-batch (the whole model, all TP ranks together).
    Cheap: shapes plus two bincounts over the layout tensors."""
    return flops_report(cfg, batch).total
