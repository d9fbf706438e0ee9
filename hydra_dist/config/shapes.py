"""Shape facts of the configured model that layers above need without building it (the
DeepSpeed bucket rule in parallel/ds_tuning.py, the planner): the one place that says which
stack a task's largest layer and working width come from. No torch import."""
from __future__ import annotations


def largest_layer_elements(cfg) -> int:
    """Parameters of the largest transformer layer on one TP rank: a ViT block against the LLM
    decoder layer (unified) or the pixel decoder's block (tokenizer)."""
    m, tp = cfg.model, max(cfg.parallel.tp, 1)
    v = m.vit
    vit = 4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.mlp_size
    if cfg.task == "tokenizer":
        d = cfg.tokenizer.decoder
        return max(vit, 4 * d.hidden_size ** 2 + 2 * d.hidden_size * d.mlp_size) // tp
    c = m.llm
    kv = c.num_kv_heads * (c.hidden_size // c.num_heads)
    llm = 2 * c.hidden_size ** 2 + 2 * c.hidden_size * kv + 3 * c.hidden_size * c.ffn_size
    return max(vit, llm) // tp


def main_hidden_size(cfg) -> int:
    """The width of the stack that dominates the run (ViT for the tokenizer, else the LLM)."""
    return cfg.model.vit.hidden_size if cfg.task == "tokenizer" else cfg.model.llm.hidden_size
