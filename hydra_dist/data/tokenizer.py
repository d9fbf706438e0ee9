"""Tokenizers. `byte`: UTF-8 bytes + 4 specials, needs no files (tiny runs, tests).
A folder path: a local Hugging Face tokenizer (e.g. Qwen2.5's), never downloaded."""
from __future__ import annotations

from pathlib import Path
from typing import List


class ByteTokenizer:
    PAD, BOS, EOS, IMG = 256, 257, 258, 259
    vocab_size = 260

    def encode(self, text: str) -> List[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """Wraps a local `transformers` tokenizer; IMG is a reserved special token it must define."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer
        if not Path(path).is_dir():
            raise FileNotFoundError(f"data.tokenizer: {path} is not a local tokenizer folder")
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.vocab_size = len(self.tok)
        self.PAD = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.EOS = self.tok.eos_token_id
        self.BOS = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.EOS
        img = self.tok.convert_tokens_to_ids("<|image_pad|>")
        if img is None or img == self.tok.unk_token_id:
            raise ValueError(f"data.tokenizer: {path} has no <|image_pad|> token")
        self.IMG = img
        self.path = path
        for special in ("<|im_start|>", "<|im_end|>"):
            tid = self.tok.convert_tokens_to_ids(special)
            if tid is None or tid == self.tok.unk_token_id:
                raise ValueError(f"data.tokenizer: {path} has no {special} token")

    def render_chat(self, messages: List[dict], add_generation_prompt: bool = False) -> str:
        """Messages [{role, content}] -> text through the tokenizer's chat template."""
        if not self.tok.chat_template:
            raise ValueError(f"data.tokenizer: {self.path} has no chat template (instruct data)")
        if not messages and not add_generation_prompt:
            return ""
        return self.tok.apply_chat_template(messages, tokenize=False,
                                            add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> List[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


def load_tokenizer(spec: str):
    return ByteTokenizer() if spec == "byte" else HFTokenizer(spec)
