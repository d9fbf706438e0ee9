"""Qwen2.5-architecture decoder on megatron-core layers: RMSNorm, SwiGLU, RoPE (theta 1e6),
grouped-query attention with QKV bias, vocab-parallel embedding and LM head."""
from __future__ import annotations

import torch
from megatron.core import tensor_parallel
from torch import nn

from hydra_dist.config.schema import LLMConfig

from .layers import RMSNorm, SelfAttention, SwiGLU, col_linear, normal_init, rope_cos_sin, scaled_std


class DecoderLayer(nn.Module):
    def __init__(self, mp, c: LLMConfig, std: float):
        super().__init__()
        out_std = scaled_std(std, c.num_layers)
        self.input_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.attn = SelfAttention(mp, c.hidden_size, c.num_heads, c.num_kv_heads, std,
                                  qkv_bias=True, out_bias=False, out_std=out_std)
        self.post_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = SwiGLU(mp, c.hidden_size, c.ffn_size, std, out_std)

    def forward(self, x, mask, rope, kv=None):
        x = x + self.attn(self.input_norm(x), mask, rope, kv)
        return x + self.mlp(self.post_norm(x))


# Initialisation seeds per piece: every piece of the model draws its initial weights from its
# own seed (init_base, piece), so a pipeline stage that builds only some pieces
# (models/pipeline_stage.py) gets exactly the weights the whole model would have.
SEED_VISION, SEED_EMBED, SEED_LM_HEAD, SEED_FLOW_HEAD, SEED_LAYER0 = 0, 1, 2, 3, 16


def seed_piece(init_base, piece: int) -> None:
    """Reseed the global generator for one piece (no-op when init_base is None)."""
    if init_base is not None:
        torch.manual_seed((int(init_base) * 1_000_003 + piece) % (2 ** 62))


def make_embed(mp, c: LLMConfig, std: float, init_base=None):
    seed_piece(init_base, SEED_EMBED)
    return tensor_parallel.VocabParallelEmbedding(c.vocab_size, c.hidden_size,
                                                  init_method=normal_init(std), config=mp)


def make_layer(mp, c: LLMConfig, std: float, index: int, init_base=None):
    seed_piece(init_base, SEED_LAYER0 + index)
    return DecoderLayer(mp, c, std)


def make_lm_head(mp, c: LLMConfig, std: float, init_base=None):
    seed_piece(init_base, SEED_LM_HEAD)
    return None if c.tie_word_embeddings else col_linear(mp, c.hidden_size, c.vocab_size, std, False)


class QwenLM(nn.Module):
    def __init__(self, mp, c: LLMConfig, std: float, init_base=None):
        super().__init__()
        self.cfg = c
        self.embed = make_embed(mp, c, std, init_base)
        self.layers = nn.ModuleList(make_layer(mp, c, std, i, init_base) for i in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = make_lm_head(mp, c, std, init_base)
        self.checkpointing = False

    def embed_tokens(self, input_ids_BS):
        return self.embed(input_ids_BS)

    def forward(self, x_BSH, mask, position_ids_BS, cache=None):
        """cache: a list of LayerKV (one per layer) for incremental inference."""
        rope = rope_cos_sin(position_ids_BS, self.cfg.hidden_size // self.cfg.num_heads,
                            self.cfg.rope_theta, x_BSH.dtype)
        for i, layer in enumerate(self.layers):
            if cache is not None:
                x_BSH = layer(x_BSH, mask, rope, cache[i])
            elif self.checkpointing and torch.is_grad_enabled():
                x_BSH = torch.utils.checkpoint.checkpoint(layer, x_BSH, mask, rope, use_reentrant=False)
            else:
                x_BSH = layer(x_BSH, mask, rope)
        return self.norm(x_BSH)

    def logits(self, h_BSH):
        """Vocab-parallel logits [B,S,V/tp]."""
        if self.lm_head is None:
            return tied_logits(h_BSH, self.embed.weight)
        return self.lm_head(h_BSH)[0]


def tied_logits(h_BSH, embed_weight_VH):
    """Logits on the (vocab-parallel) embedding weight. Each TP rank holds V/tp rows, so dL/dh
    from one rank covers only its vocabulary slice: copy_to_tensor_model_parallel_region is the
    identity forward and all-reduces the gradient over the TP group backward, exactly as
    megatron's ColumnParallelLinear does for an untied head."""
    h_BSH = tensor_parallel.copy_to_tensor_model_parallel_region(h_BSH)
    return torch.matmul(h_BSH, embed_weight_VH.t())


def ntp_loss(logits_BSV, labels_BS, denominator=None):
    """Mean next-token cross-entropy over labelled positions (labels < 0 are ignored), computed
    on vocab-parallel logits without gathering the vocabulary."""
    valid = labels_BS >= 0
    target = labels_BS.clamp(min=0)
    per_tok = tensor_parallel.vocab_parallel_cross_entropy(logits_BSV.float(), target)
    count = valid.sum()
    den = count.clamp(min=1) if denominator is None else denominator
    return (per_tok * valid).sum() / den, count
