"""Inference: text answers about an image (KV cache) and images from a prompt (Euler ODE in the
GSB latent space with classifier-free guidance). Sequences follow the training layout
(data/collate.py): understanding [BOS, IMG..., text...], generation [BOS, text, EOS, IMG...].
Single process, TP=1 (logits are gathered by nothing).
"""
from __future__ import annotations

import torch

from hydra_dist.ops.attention import build_mask

from .heads import merge_patches, unmerge_patches
from .hydra import shift_time
from .layers import LayerKV


def _cache(model):
    return [LayerKV() for _ in model.llm.layers]


def _pick(logits_V, temperature: float, gen: torch.Generator | None):
    if temperature <= 0:
        return int(logits_V.argmax())
    probs = torch.softmax(logits_V.float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))


@torch.no_grad()
def answer(model, tok, image_3HW, prompt: str = "", max_new_tokens: int = 64,
           temperature: float = 0.0, seed: int = 0) -> str:
    """Text continuation of [BOS, image, prompt] (the image's caption for an empty prompt), or
    of [BOS, prompt] when image_3HW is None."""
    llm = model.llm
    M = 0
    if image_3HW is not None:
        vis = model.visual_tokens(model.encode_latent(image_3HW[None]))    # [1, M, H]
        M = vis.shape[1]
    ids = [tok.BOS] + [tok.IMG] * M + tok.encode(prompt)
    L = len(ids)
    emb = llm.embed_tokens(torch.tensor([ids]))
    img_ids = torch.zeros(1, L, dtype=torch.long)
    if M:
        emb[:, 1:1 + M] = vis.to(emb.dtype)
        img_ids[:, 1:1 + M] = 1
    cache = _cache(model)
    h = llm(emb, build_mask(torch.ones(1, L, dtype=torch.long), img_ids),
            torch.arange(L)[None], cache)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for step in range(max_new_tokens):
        nxt = _pick(llm.logits(h[:, -1:])[0, -1], temperature, gen)
        if nxt == tok.EOS:
            break
        out.append(nxt)
        # one new query sees every cached key: no mask needed
        h = llm(llm.embed_tokens(torch.tensor([[nxt]])), None, torch.tensor([[L + step]]), cache)
    return tok.decode(out)


def _prefix_cache(model, ids):
    llm, L = model.llm, len(ids)
    cache = _cache(model)
    llm(llm.embed_tokens(torch.tensor([ids])), build_mask(torch.ones(1, L, dtype=torch.long),
        torch.zeros(1, L, dtype=torch.long)), torch.arange(L)[None], cache)
    for kv in cache:  # text never attends to the image: its keys stay valid for every ODE step
        kv.frozen = True
    return cache, L


def _velocity(model, cache, L, x_BNC, t: float):
    vis = model.visual_tokens(x_BNC)
    M = vis.shape[1]
    h = model.llm(vis, None, (L + torch.arange(M))[None], cache)   # image tokens: bidirectional
    skip = merge_patches(x_BNC, model.cfg.head.merge) if model.cfg.head.latent_skip else None
    v = model.flow_head(h, torch.full((1,), t), skip)
    return unmerge_patches(v, model.cfg.head.merge, model.cfg.gsb.latent_channels)


@torch.no_grad()
def generate_latent(model, tok, prompt: str, steps: int = 20, cfg_scale: float = 3.0,
                    seed: int = 0):
    """Integrate dx/dt = v from t=1 (noise) to t=0 with Euler steps; returns mu [1, N, C]."""
    v_cfg = model.cfg.vit
    N = (v_cfg.image_size // v_cfg.patch_size) ** 2
    cond = _prefix_cache(model, [tok.BOS] + tok.encode(prompt) + [tok.EOS])
    uncond = _prefix_cache(model, [tok.BOS, tok.EOS]) if cfg_scale != 1.0 else None
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, N, model.cfg.gsb.latent_channels, generator=gen)
    # the training time shift also spaces the steps: more of them close to t = 1
    ts = shift_time(torch.linspace(1.0, 0.0, steps + 1), model.cfg.time_shift).tolist()
    for t, t_next in zip(ts[:-1], ts[1:]):
        v = _velocity(model, *cond, x, t)
        if uncond is not None:
            v_u = _velocity(model, *uncond, x, t)
            v = v_u + cfg_scale * (v - v_u)
        x = x - (t - t_next) * v
    return x
