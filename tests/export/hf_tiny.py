"""Tiny random Hugging Face Qwen2 models and shared helpers for the export tests."""
from __future__ import annotations

import torch


def save_tiny_qwen2(path, hidden=64, layers=2, heads=4, kv_heads=2, vocab=384, ffn=128,
                    tie=False, seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, max_position_embeddings=256,
                      rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=tie,
                      use_sliding_window=False, attn_implementation="eager")
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).float().eval()
    with torch.no_grad():  # HF zero-inits biases; random ones make the mapping test meaningful
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.normal_(0.0 if n.endswith("bias") else 1.0, 0.1)
    model.save_pretrained(path, safe_serialization=True)
    return model


def our_llm_logits(model, input_ids_BS):
    """Text-only logits of our HydraModel's LLM: segment 1, no images, positions 0..S-1."""
    from hydra_dist.ops.attention import build_mask
    B, S = input_ids_BS.shape
    seg = torch.ones(B, S, dtype=torch.long)
    mask = build_mask(seg, torch.zeros_like(seg))
    pos = torch.arange(S)[None].expand(B, S)
    h = model.llm(model.llm.embed_tokens(input_ids_BS), mask, pos)
    return model.llm.logits(h)
