"""DeepSpeed ZeRO communication settings derived from the model size and the layout, not
frozen (docs/performance.md, "DeepSpeed settings"). No torch import: the planner uses it too.

The rule; every value can be pinned under parallel.deepspeed.*:
- overlap_comm: on with CUDA. NCCL runs on its own stream, so the reduction of one gradient
  bucket (and, ZeRO-3, the gather of the next layer) runs while compute goes on; the planner's
  `overlap` assumes exactly that. Off on CPU: gloo has no side stream, overlap only adds copies.
- bucket (reduce_bucket_size, allgather_bucket_size): one transformer layer's parameters on
  this TP rank (the largest of an LLM decoder layer and a ViT block), clamped to
  [5e6, 5e8] elements. A layer's gradients are complete when its backward ends, so a one-layer
  bucket starts its reduction then and overlaps with the layers below it; smaller buckets pay
  the collective's latency more often, larger ones wait for several layers first.
- stage3_prefetch_bucket_size (ZeRO-3): the same one layer, so the next layer's all-gather runs
  during this layer's compute.
- stage3_param_persistence_threshold (ZeRO-3): 10 x the hidden size with CUDA (norm weights
  and biases stay whole instead of one tiny gather per module and pass: latency, not bytes, is
  their cost); 0 on CPU, where a gather is a memcpy and the memory tests measure exact
  partitions.
"""
from __future__ import annotations

from dataclasses import dataclass

from hydra_dist.config.shapes import largest_layer_elements, main_hidden_size

MIN_BUCKET, MAX_BUCKET = int(5e6), int(5e8)


@dataclass
class ZeroTuning:
    overlap_comm: bool
    bucket: int
    prefetch: int
    persistence: int


def zero_tuning(cfg, cuda: bool) -> ZeroTuning:
    t = cfg.parallel.deepspeed
    overlap = cuda if t.overlap_comm == "auto" else t.overlap_comm == "always"
    layer = min(max(largest_layer_elements(cfg), MIN_BUCKET), MAX_BUCKET)
    bucket = t.bucket_elements or layer
    prefetch = t.prefetch_elements or layer
    hidden = main_hidden_size(cfg)
    persist = t.persistence_threshold if t.persistence_threshold >= 0 else (10 * hidden if cuda else 0)
    return ZeroTuning(overlap, int(bucket), int(prefetch), int(persist))


def zero_section(cfg, cuda: bool) -> dict:
    """The zero_optimization block of the DeepSpeed config."""
    stage = cfg.parallel.zero_stage
    z = {"stage": stage}
    if stage == 0:
        return z
    t = zero_tuning(cfg, cuda)
    z.update(overlap_comm=t.overlap_comm, reduce_bucket_size=t.bucket, contiguous_gradients=True)
    if stage == 3:
        z.update(stage3_prefetch_bucket_size=t.prefetch,
                 stage3_param_persistence_threshold=t.persistence,
                 stage3_gather_16bit_weights_on_model_save=False)
    else:
        z.update(allgather_bucket_size=t.bucket)
    return z
