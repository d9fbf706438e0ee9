"""Turn image-caption samples into HYDRA training sequences.

Per sample (fixed length S = 1 + n_vis + T + 1 so batches stack without packing):
  understanding: [BOS, IMG x n_vis, caption, EOS, PAD...]   NTP loss on caption + EOS
  generation:    [BOS, caption, EOS, IMG x n_vis, PAD...]   FM loss on the visual tokens
The task of a sample is a pure function of (sample id, seed), so it survives resume.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IGNORE = -100


def image_to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return arr.float() / 127.5 - 1.0  # [-1, 1]


def is_generation(sample_id: int, seed: int, fraction: float) -> bool:
    h = (int(sample_id) * 2654435761 + seed * 97) % (2 ** 32)
    return h / 2 ** 32 < fraction


class HydraCollator:
    def __init__(self, tokenizer, image_size: int, n_vis: int, max_text: int,
                 generation_fraction: float, seed: int):
        self.tok, self.size, self.n_vis = tokenizer, image_size, n_vis
        self.max_text, self.frac, self.seed = max_text, generation_fraction, seed
        self.seq_len = 1 + n_vis + max_text + 1

    def _one(self, sample: dict):
        tok, n = self.tok, self.n_vis
        text = tok.encode(sample["caption"])[: self.max_text] + [tok.EOS]
        gen = is_generation(sample["id"], self.seed, self.frac)
        if gen:
            ids = [tok.BOS] + text + [tok.IMG] * n
            vis_start = 1 + len(text)
            labels = [IGNORE] * len(ids)
        else:
            ids = [tok.BOS] + [tok.IMG] * n + text
            vis_start = 1
            # position p predicts token p+1: the last image token predicts the first word
            labels = [IGNORE] * n + text + [IGNORE]
        L, pad = len(ids), self.seq_len - len(ids)
        image_ids = [0] * L
        image_ids[vis_start:vis_start + n] = [1] * n
        return {
            "input_ids": ids + [tok.PAD] * pad,
            "labels": labels + [IGNORE] * pad,
            "position_ids": list(range(L)) + [0] * pad,
            "segment_ids": [1] * L + [0] * pad,
            "image_ids": image_ids + [0] * pad,
            "visual_index": list(range(vis_start, vis_start + n)),
            "is_gen": gen,
        }

    def __call__(self, samples):
        rows = [self._one(s) for s in samples]
        out = {k: torch.tensor([r[k] for r in rows]) for k in rows[0] if k != "is_gen"}
        out["is_gen"] = torch.tensor([r["is_gen"] for r in rows], dtype=torch.bool)
        out["images"] = torch.stack([image_to_tensor(s["image"], self.size) for s in samples])
        out["image_weight"] = torch.ones(len(samples))
        out["sample_ids"] = torch.tensor([int(s["id"]) for s in samples])
        return out
