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


def label_index(labels_BS) -> torch.Tensor:
    """Flat indices (into B*S) of the positions that carry a label. The training task computes
    them on the CPU before the batch goes to the device (a nonzero on the device would be a
    host sync per micro-batch); other callers (eval, tests) get them here."""
    return (labels_BS.reshape(-1) >= 0).nonzero().squeeze(1)


def ntp_loss(h_BSH, labels_BS, logits_fn, denominator=None, index=None):
    """Mean next-token cross-entropy over labelled positions (labels < 0 are ignored). The LM
    head and the fp32 cross-entropy run on those positions only (captions are ~20-40 of a
    row's ~514 tokens; image and padding positions carry no label), on vocab-parallel logits
    without gathering the vocabulary. index: label_index(labels_BS) when the caller has it."""
    idx = label_index(labels_BS) if index is None else index
    h_1TH = h_BSH.reshape(-1, h_BSH.shape[-1]).index_select(0, idx)[None]
    target = labels_BS.reshape(-1).index_select(0, idx)[None]
    per_tok = tensor_parallel.vocab_parallel_cross_entropy(logits_fn(h_1TH).float(), target)
    count = torch.tensor(idx.numel(), device=h_BSH.device)
    den = count.clamp(min=1) if denominator is None else denominator
    return per_tok.sum() / den, count
