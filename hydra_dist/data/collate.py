"""Turn samples into HYDRA training rows, packed to a token budget.

Per sample (positions restart at 0 in each sample; a sample is never split across rows):
  caption (understanding): [BOS, IMG x n_vis, text, EOS]   NTP on text + EOS
  generation:              [BOS, text, EOS, IMG x n_vis]   FM on the image; text dropped with
                                                           prob. cfg_dropout (classifier-free guidance)
  text:                    [BOS, text, EOS]                NTP on text + EOS
Instruct samples (data/samples.py) carry `segments`: NTP only on assistant turns.
Batch layout (R rows of S tokens, I images):
  input_ids, labels, position_ids, segment_ids, image_ids  [R, S]
  images [I,3,H,W], image_weight [I], is_gen [I], sample_ids [I], visual_index [I, n_vis]
visual_index is a flat index into R*S. A micro-batch without any image gets one dummy image
(weight 0, visual_index -1): every rank then runs the vision path and issues the same
collectives (ZeRO-3 would otherwise hang).
A sample's task and prompt dropout are pure functions of (sample id, seed): resume-safe.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IGNORE = -100
TASKS = ("caption", "generation", "text")


def _rgb_array(img: Image.Image, size: int) -> np.ndarray:
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def image_pixels(imgs, size: int) -> torch.Tensor:
    """[N, 3, size, size] uint8: what the training batch carries. The model maps it to [-1, 1]
    on its device (models/vit.py model_pixels): the loader's main process does no float work
    (per-image float conversion and a float stack were 4/5 of its time at 448 px,
    benchmarks/bench_data.py) and a quarter of the bytes are pinned and copied. (Workers hand
    over PIL images: uint8 tensors through shared memory were slower to receive.)"""
    return torch.from_numpy(np.stack([_rgb_array(im, size) for im in imgs])).permute(0, 3, 1, 2)


def pixels_to_unit(px: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [-1, 1], the one formula for every path."""
    return px.float().div_(127.5).sub_(1.0)


def images_to_tensor(imgs, size: int) -> torch.Tensor:
    """[N, 3, size, size] float in [-1, 1] (eval, generation, HYDRA-TOK's image batches)."""
    return pixels_to_unit(image_pixels(imgs, size))


def image_to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """[3, size, size] float in [-1, 1]."""
    return images_to_tensor([img], size)[0]


def _unit_hash(sample_id: int, seed: int, salt: int) -> float:
    h = (int(sample_id) * 2654435761 + seed * 97 + salt * 1_000_003) % (2 ** 32)
    return h / 2 ** 32


def is_generation(sample_id: int, seed: int, fraction: float) -> bool:
    return _unit_hash(sample_id, seed, 0) < fraction


class HydraCollator:
    def __init__(self, tokenizer, image_size: int, n_vis: int, max_text: int,
                 generation_fraction: float, seed: int, pack_tokens: int = 0,
                 cfg_dropout: float = 0.0):
        self.tok, self.size, self.n_vis = tokenizer, image_size, n_vis
        self.max_text, self.frac, self.seed = max_text, generation_fraction, seed
        self.cfg_dropout = cfg_dropout
        self.max_sample = 1 + n_vis + max_text + 1
        self.seq_len = pack_tokens or self.max_sample
        if self.seq_len < self.max_sample:
            raise ValueError(f"data.pack_tokens={pack_tokens} cannot hold one sample of up to "
                             f"{self.max_sample} tokens (1 + {n_vis} visual + {max_text} text + 1)")

    def task_of(self, sample: dict) -> str:
        task = sample.get("task")
        if task:
            if task not in TASKS:
                raise ValueError(f"sample {sample.get('id')}: unknown task {task!r}")
            return task
        if sample.get("image") is None:
            return "text"
        return "generation" if is_generation(sample["id"], self.seed, self.frac) else "caption"

    def _text(self, sample: dict):
        """(text ids, per-token trained flags, EOS trained) truncated to max_text. Instruct samples
        carry `segments` [(text, trained)]: only assistant turns are learned (SFT masking)."""
        segments = sample.get("segments")
        if not segments:
            text = self.tok.encode(sample.get("caption") or sample.get("text") or "")[: self.max_text]
            return text, [True] * len(text), True
        ids, trained = [], []
        for piece, tr in segments:
            enc = self.tok.encode(piece)
            ids += enc
            trained += [bool(tr)] * len(enc)
        # a reply cut by max_text must not learn to stop there
        whole = len(ids) <= self.max_text
        return ids[: self.max_text], trained[: self.max_text], whole and bool(segments[-1][1])

    def _tokens(self, sample: dict, task: str):
        """(ids, labels, vis_start or None) of one sample."""
        tok, n = self.tok, self.n_vis
        text, trained, eos_trained = self._text(sample)
        targets = [t if tr else IGNORE for t, tr in zip(text, trained)]
        eos = tok.EOS if eos_trained else IGNORE
        if task == "generation":
            if self.cfg_dropout and _unit_hash(sample["id"], self.seed, 1) < self.cfg_dropout:
                text = []  # unconditional example for classifier-free guidance
            ids = [tok.BOS] + text + [tok.EOS] + [tok.IMG] * n
            return ids, [IGNORE] * len(ids), len(text) + 2
        if task == "caption":
            ids = [tok.BOS] + [tok.IMG] * n + text + [tok.EOS]
            # position p predicts token p+1: the last image token predicts the first word
            return ids, [IGNORE] * n + targets + [eos] + [IGNORE], 1
        ids = [tok.BOS] + text + [tok.EOS]
        return ids, targets + [eos] + [IGNORE], None

    def __call__(self, samples):
        S, tok = self.seq_len, self.tok
        rows, cur = [], None
        images, weights, gen, sids, vidx = [], [], [], [], []
        for s in samples:
            task = self.task_of(s)
            ids, labels, vis_start = self._tokens(s, task)
            if cur is None or cur["used"] + len(ids) > S:
                cur = {"ids": [tok.PAD] * S, "labels": [IGNORE] * S, "pos": [0] * S,
                       "seg": [0] * S, "img": [0] * S, "used": 0, "nseg": 0, "nimg": 0}
                rows.append(cur)
            o, r = cur["used"], len(rows) - 1
            cur["nseg"] += 1
            cur["ids"][o:o + len(ids)] = ids
            cur["labels"][o:o + len(ids)] = labels
            cur["pos"][o:o + len(ids)] = range(len(ids))
            cur["seg"][o:o + len(ids)] = [cur["nseg"]] * len(ids)
            if vis_start is not None:
                cur["nimg"] += 1
                a = o + vis_start
                cur["img"][a:a + self.n_vis] = [cur["nimg"]] * self.n_vis
                images.append(s["image"])
                weights.append(1.0)
                gen.append(task == "generation")
                sids.append(int(s["id"]))
                vidx.append([r * S + a + j for j in range(self.n_vis)])
            cur["used"] += len(ids)
        if not images:  # dummy image: same collectives on every rank, zero weight in the loss
            pixels = torch.zeros(1, 3, self.size, self.size, dtype=torch.uint8)
            weights.append(0.0)
            gen.append(False)
            sids.append(-1)
            vidx.append([-1] * self.n_vis)
        else:
            pixels = image_pixels(images, self.size)
        return {
            "input_ids": torch.tensor([r["ids"] for r in rows]),
            "labels": torch.tensor([r["labels"] for r in rows]),
            "position_ids": torch.tensor([r["pos"] for r in rows]),
            "segment_ids": torch.tensor([r["seg"] for r in rows]),
            "image_ids": torch.tensor([r["img"] for r in rows]),
            "images": pixels,
            "image_weight": torch.tensor(weights),
            "is_gen": torch.tensor(gen, dtype=torch.bool),
            "sample_ids": torch.tensor(sids),
            "visual_index": torch.tensor(vidx),
        }
