"""Sources -> one StreamingDataset with a Stream per source, and per-sample decoding.

Each Stream carries its task (caption, generation, text, instruct, auto), so a stage's
text : caption : generation ratio is the ratio of the streams' proportions, and a sample's
task is fixed by the stream it was drawn from (no hashing). `auto` keeps the old behaviour:
image rows are split by `generation_fraction` on a hash of the sample id, rows without an
image are text. A sample's id is its global index in the dataset (unique across sources,
independent of world size and of resumption), which seeds its task hash, prompt dropout and
flow noise in the collator.

Decoding is wrapped: a sample that fails (truncated image, missing field, wrong type) comes
back as a marker {"__bad__": reason, "source": name, "id": idx} that the loader drops and
counts; the run goes on. So does a sample whose fields no longer match the xxh3 digest written
with them (integrity.py); a remote shard that fails its index.json hash stops the run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from streaming import Stream, StreamingDataset

from .integrity import SAMPLE_HASH, SHARD_HASH, check_sample
from .transforms import decode_image, resize_center_crop

log = logging.getLogger("hydra_dist")

# Errors that mean "this sample is bad"; anything else (a missing shard, a crashed download
# thread) still stops the run.
SAMPLE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError,
                 SyntaxError, UnicodeDecodeError, json.JSONDecodeError, OSError)


@dataclass
class SourceSpec:
    """What the dataset needs of one data.sources entry (config.schema.SourceConfig)."""
    path: str = ""
    remote: str = ""
    task: str = "auto"
    proportion: float = 0.0
    name: str = ""


def _cache_root(cache_dir: str) -> Path:
    return Path(cache_dir or f"{tempfile.gettempdir()}/hydra_mds_cache")


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def resolve_streams(sources: List[SourceSpec], cache_dir: str = "") -> List[dict]:
    """(local, remote, name, task, proportion) per source. Streaming refuses two streams on one
    local folder; a local source used twice (caption and generation) gets a symlinked alias."""
    out, seen = [], set()
    for i, s in enumerate(sources):
        remote = s.remote or (s.path if "://" in s.path else "")
        local = s.path if (s.path and "://" not in s.path) else ""
        if remote and not local:
            local = str(_cache_root(cache_dir) / f"{_digest(remote)}-{i}")
        if not remote and not (Path(local) / "index.json").is_file():
            raise FileNotFoundError(f"data.sources[{i}].path: {local} has no MDS index.json")
        key = os.path.realpath(local)
        if key in seen:
            if remote:
                local = str(_cache_root(cache_dir) / f"{_digest(remote)}-{i}")
            else:
                alias = _cache_root(cache_dir) / "alias" / f"{_digest(key)}-{i}"
                alias.parent.mkdir(parents=True, exist_ok=True)
                try:
                    alias.symlink_to(key, target_is_directory=True)
                except FileExistsError:
                    pass
                local = str(alias)
        seen.add(os.path.realpath(local))
        name = s.name or f"{Path(s.path or s.remote.rstrip('/')).name}/{s.task}"
        out.append({"local": local, "remote": remote or None, "name": name, "task": s.task,
                    "proportion": s.proportion or None})
    return out


def strip_image_tag(text: str) -> str:
    return text.replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "").strip()


def conversation_messages(conv) -> list:
    roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
             "system": "system"}
    if not isinstance(conv, list) or not conv:
        raise ValueError("conversations is not a non-empty list")
    msgs = []
    for k, turn in enumerate(conv):
        # the one rule set: hydra-prepare-data validates LLaVA records with this function too
        if not isinstance(turn, dict) or turn.get("from") not in roles \
                or not isinstance(turn.get("value"), str):
            raise ValueError(f"bad conversation turn {k}: needs 'from' in {sorted(roles)} and a "
                             f"string 'value', got {str(turn)[:80]}")
        msgs.append({"role": roles[turn["from"]], "content": strip_image_tag(turn["value"])})
    return msgs


class ChatRenderer:
    """Conversation -> text with the tokenizer's chat template (or a ChatML fallback for the
    byte tokenizer). Loaded lazily so the dataset stays cheap to pickle into workers."""

    def __init__(self, tokenizer_spec: str = "byte"):
        self.spec, self._tok = tokenizer_spec, None

    def render(self, messages: list, add_generation_prompt: bool = False) -> str:
        if self.spec == "byte":
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
        if self._tok is None:
            from .tokenizer import HFTokenizer
            self._tok = HFTokenizer(self.spec)
        return self._tok.render_chat(messages, add_generation_prompt)

    def __call__(self, messages: list) -> str:
        return self.render(messages)

    def segments(self, messages: list) -> List[Tuple[str, bool]]:
        """The rendered conversation as (text, trained) pieces: an assistant turn's content and
        end marker are trained; system and user turns and the assistant header are context
        (SFT masks them from the loss). Built from rendered prefixes, so any chat template works
        as long as each prefix renders as a prefix of the next (checked, never guessed)."""
        out: List[Tuple[str, bool]] = []
        done = ""
        for k, m in enumerate(messages):
            full = self.render(messages[:k + 1])
            head = self.render(messages[:k], add_generation_prompt=True) if m["role"] == "assistant" else done
            if not (head.startswith(done) and full.startswith(head)):
                raise ValueError(f"data.tokenizer {self.spec}: the chat template does not render "
                                 f"turn {k} ({m['role']}) as an extension of the turns before it; "
                                 "cannot tell its tokens apart for loss masking")
            if len(head) > len(done):
                out.append((head[len(done):], False))
            out.append((full[len(head):], m["role"] == "assistant"))
            done = full
        return [(t, tr) for t, tr in out if t]

    def __getstate__(self):
        return {"spec": self.spec, "_tok": None}


class ShardHashError(RuntimeError):
    """A downloaded shard that does not match its index.json hash: the data set, not a sample,
    is damaged, so the run stops (RuntimeError is not among SAMPLE_ERRORS)."""


class VerifiedStream(Stream):
    """A Stream that checks each shard it downloads against index.json's xxh3_64 whenever the
    index carries one (streaming checks only when asked, and only at download)."""

    failure: Optional[ShardHashError] = None

    def get_shards(self, world, allow_unsafe_types: bool):
        shards = super().get_shards(world, allow_unsafe_types)
        if self.remote and not self.validate_hash and shards and \
                SHARD_HASH in shards[0].file_pairs[0][0].hashes:
            self.validate_hash = SHARD_HASH
        return shards

    def prepare_shard(self, shard) -> int:
        try:
            return super().prepare_shard(shard)
        except ValueError as e:
            if not str(e).startswith("Checksum failure"):
                raise
            bad = str(e).split(": ", 1)[1]
            # Streaming leaves the failed copy in its cache and would trust it next time.
            if os.path.isfile(bad):
                os.remove(bad)
            self.failure = ShardHashError(
                f"data: {os.path.basename(bad)} of {self.remote} does not match the "
                f"{self.validate_hash} in {self.remote}/index.json after download (local copy "
                f"{bad} deleted): the remote shard or the download is damaged; re-copy it")
            raise self.failure from e


class MixtureDataset(StreamingDataset):
    """A StreamingDataset whose samples come back decoded, tagged with task and source."""

    def __init__(self, *, stream_info: List[dict], image_size: Optional[int],
                 chat: Optional[ChatRenderer] = None, **kwargs):
        streams = [VerifiedStream(local=s["local"], remote=s["remote"], proportion=s["proportion"])
                   for s in stream_info]
        super().__init__(streams=streams, **kwargs)
        self.stream_info, self.image_size = stream_info, image_size
        self.chat = chat or ChatRenderer()
        for sid, info in enumerate(stream_info):
            first = next((sh for sh, st in zip(self.shards, self.stream_per_shard) if st == sid), None)
            if first is not None and SAMPLE_HASH not in getattr(first, "column_names", [SAMPLE_HASH]):
                log.warning("data: %s has no per-sample %s column (written by another tool or an "
                            "older hydra-prepare-data): its samples are read unchecked; re-convert "
                            "to detect changed bytes", info["name"], SAMPLE_HASH)

    def stream_of(self, idx: int) -> int:
        shard_id, _ = self.spanner[idx]
        return int(self.stream_per_shard[shard_id])

    def shard_file(self, idx: int) -> str:
        shard_id, _ = self.spanner[idx]
        shard = self.shards[shard_id]
        return os.path.join(shard.dirname, shard.split or "", shard.file_pairs[0][0].basename)

    def get_item(self, idx: int, retry: int = 7):
        idx = int(idx)  # streaming hands numpy ints; ids go to json state and tensors
        info = self.stream_info[self.stream_of(idx)]
        try:
            raw = super().get_item(idx, retry)
            check_sample(raw, f"{self.shard_file(idx)} sample {idx}")
            return self.decode(raw, info, idx)
        except SAMPLE_ERRORS as e:
            return {"__bad__": f"{type(e).__name__}: {e}"[:400], "source": info["name"], "id": idx}

    def __iter__(self):
        # A shard failing its hash in streaming's download thread surfaces here only as
        # "Background thread failed"; raise the stream's own error, which names the shard.
        try:
            yield from super().__iter__()
        except RuntimeError as e:
            failed = [st.failure for st in self.streams if getattr(st, "failure", None)]
            if failed and failed[0] is not e:
                raise failed[0] from e
            raise

    def _image(self, data):
        img = decode_image(data)
        return resize_center_crop(img, self.image_size) if self.image_size else img

    def decode(self, raw: dict, info: dict, idx: int) -> dict:
        task = info["task"]
        out = {"id": idx, "source": info["name"]}
        if task == "instruct":
            segments = self.chat.segments(conversation_messages(raw["conversations"]))
            text = "".join(t for t, _ in segments)
            img = raw.get("image")
            if img is not None and len(img):
                out.update(task="caption", image=self._image(img), caption=text, segments=segments)
            else:
                out.update(task="text", text=text, segments=segments)
            return out
        if task == "text" or (task == "auto" and raw.get("image") is None):
            text = raw.get("text", raw.get("caption"))
            if not isinstance(text, str):
                raise TypeError(f"text is {type(text).__name__}, not str")
            out.update(task="text", text=text)
            return out
        caption = raw["caption"]
        if not isinstance(caption, str):
            raise TypeError(f"caption is {type(caption).__name__}, not str")
        out.update(image=self._image(raw["image"]), caption=caption)
        if task != "auto":  # auto: the collator hashes the id with generation_fraction
            out["task"] = task
        return out
