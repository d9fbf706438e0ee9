"""Helpers for the data tests: small images, MDS sources with planted bad samples, and a tiny
Qwen-style Hugging Face tokenizer built here (no download).

A uniquely named module, not conftest.py: several test folders have a conftest, and
`from conftest import ...` inside a test body gets whichever one pytest loaded last."""
from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image


def jpeg_bytes(i: int, size=(24, 20), fmt="JPEG") -> bytes:
    rng = random.Random(i)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    img.paste(tuple(rng.randrange(256) for _ in range(3)), (2, 2, size[0] // 2, size[1] // 2))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def truncated_jpeg(i: int) -> bytes:
    data = jpeg_bytes(i, size=(64, 64))
    return data[: len(data) // 2]


def write_caption_mds(out: Path, n: int, bad: dict | None = None, size_limit="4kb") -> Path:
    """image_caption-like MDS with a json caption column, so planted bad rows can hold a
    missing (None) or wrong-typed caption. bad: {index: "truncated"|"garbage"|"missing"|"type"}."""
    from streaming import MDSWriter
    bad = bad or {}
    cols = {"id": "int", "image": "bytes", "caption": "json"}
    with MDSWriter(out=str(out), columns=cols, size_limit=size_limit) as w:
        for i in range(n):
            kind = bad.get(i)
            img = truncated_jpeg(i) if kind == "truncated" else (
                b"not an image" if kind == "garbage" else jpeg_bytes(i))
            cap = None if kind == "missing" else (123 if kind == "type" else f"sample {i}")
            w.write({"id": i, "image": img, "caption": cap})
    return out


def write_text_mds(out: Path, n: int) -> Path:
    from streaming import MDSWriter
    with MDSWriter(out=str(out), columns={"id": "int", "text": "str"}, size_limit="2kb") as w:
        for i in range(n):
            w.write({"id": i, "text": f"plain text number {i}"})
    return out


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tokenizer(out: Path, chat_template: bool = True) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>"]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["a red circle at the top left", "describe the image please",
                             "user assistant system hello world"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>",
                                   additional_special_tokens=specials[1:])
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return out
