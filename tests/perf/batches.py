"""Tiny real batches (the collator on synthetic samples) for the perf tests."""
from hydra_dist.data.collate import HydraCollator
from hydra_dist.data.synthetic import make_sample
from hydra_dist.data.tokenizer import ByteTokenizer


def tiny_batch(cfg, n: int, pack_tokens: int = 0, gen_fraction: float = 0.5, text_every: int = 0):
    v = cfg.model.vit
    n_vis = ((v.image_size // v.patch_size) // cfg.model.head.merge) ** 2
    col = HydraCollator(ByteTokenizer(), v.image_size, n_vis, cfg.data.max_text_tokens,
                        gen_fraction, seed=3, pack_tokens=pack_tokens)
    samples = []
    for i in range(n):
        img, cap, _ = make_sample(i, 11, v.image_size)
        s = {"id": i, "image": img, "caption": cap}
        if text_every and i % text_every == 0:
            s = {"id": i, "image": None, "text": cap}
        samples.append(s)
    return col(samples)
