"""How the models are cut: the one TP sharding rule (partition dim of every HydraModel and
HYDRA-TOK parameter, by name; TP merge / split) and the one pipeline chunking rule.

Used by export, import, elastic resharding, tokenizer weights and both pipeline stages;
tests/models/test_tp_rule.py holds the name rule against megatron-core's own layer attributes.

megatron-core layers shard as follows (dim of the PyTorch tensor, [out, in] for weights):
  ColumnParallelLinear  weight dim 0, bias dim 0      (q, k, v, gate, up, fc1, lm_head)
  RowParallelLinear     weight dim 1, bias replicated (o, down, fc2)
  VocabParallelEmbedding weight dim 0                 (llm.embed)
  everything else       replicated (norms, patch embed, GSB, flow head)
q, k and v are separate column-parallel layers, so GQA heads shard by a plain split of dim 0
(no interleaving to undo). Names are our parameter names (`llm.layers.0.attn.q.weight`).
"""
from __future__ import annotations

from typing import List, Optional

import torch

COLUMN = ("attn.q", "attn.k", "attn.v", "mlp.gate", "mlp.up", "mlp.fc1", "lm_head",
          "attn.q_norm", "attn.k_norm")  # QK-norm weights shard like the q / k outputs
ROW = ("attn.o", "mlp.down", "mlp.fc2")
VOCAB = ("llm.embed",)


def partition_dim(name: str) -> Optional[int]:
    """The dim along which TP ranks hold slices of `name`, or None when replicated."""
    module, _, kind = name.rpartition(".")
    if any(module == m or module.endswith("." + m) for m in COLUMN):
        return 0
    if any(module == m or module.endswith("." + m) for m in ROW):
        return 1 if kind == "weight" else None
    if module in VOCAB:
        return 0
    return None


def merge_tp(name: str, shards: List[torch.Tensor]) -> torch.Tensor:
    """Full tensor from the TP ranks' slices (rank order)."""
    if len(shards) == 1:
        return shards[0]
    dim = partition_dim(name)
    if dim is None:
        return shards[0]  # replicated: every rank holds the same values
    return torch.cat(shards, dim=dim)


def split_tp(name: str, full: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    """This TP rank's slice of a full tensor (the inverse of merge_tp)."""
    dim = partition_dim(name)
    if tp == 1 or dim is None:
        return full
    if full.shape[dim] % tp:
        raise ValueError(f"{name}: dim {dim} of size {full.shape[dim]} is not divisible by tp={tp}")
    return full.chunk(tp, dim=dim)[rank].contiguous()


def chunk_layers(num_layers: int, chunk: int, num_chunks: int) -> range:
    """The layers of pipeline chunk `chunk` of `num_chunks` (an even split; the config checks
    divisibility): the LLM's layers (unified) or the pixel decoder's blocks (tokenizer)."""
    per = num_layers // num_chunks
    return range(chunk * per, (chunk + 1) * per)
