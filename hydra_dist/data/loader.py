"""Streaming batches from MDS sources with mosaicml-streaming: mixtures, bad-sample skipping
with fixed batch shapes, and an exactly resumable position (docs/data.md).

Each rank reads raw micro-batches from its own partition (ranks read disjoint samples; the
tp*pp consecutive ranks of one model replica read the same ones: `replication`). Bad samples
(markers from samples.MixtureDataset) are dropped and counted per source; the batch is
refilled from the rank's next samples through a small FIFO. So a rank with bad samples reaches
the end of its epoch partition a little early: it then owes a few batches, filled by cycling
its last `micro_batch` good samples, and every rank still emits exactly as many batches per
epoch as it has raw batches, so all ranks cross epoch boundaries at the same step.

Resume: the state holds, per rank, the raw position, the FIFO length and how far back its
recent good samples reach. Streaming resumes all ranks at the earliest such position P (a
global sample offset), and each rank replays raw batches from P up to its own position to
rebuild its FIFO: a resumed run then sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import logging
from collections import Counter, deque
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .samples import ChatRenderer, MixtureDataset, SourceSpec, resolve_streams

log = logging.getLogger("hydra_dist")


# Read on the host only (the per-sample noise generators are seeded from them): sending them to
# the device would make every micro-batch's .tolist() a device-to-host sync.
HOST_KEYS = ("sample_ids",)


def to_device(batch: dict, device) -> dict:
    """A collated micro-batch on the training device (non-blocking from pinned memory), the
    HOST_KEYS left where they are."""
    return {k: v if k in HOST_KEYS else v.to(device, non_blocking=True) for k, v in batch.items()}
LOG_FIRST_BAD = 10


def _as_list(samples):  # module level: picklable for DataLoader workers
    return samples


def _spec(s) -> SourceSpec:
    if isinstance(s, SourceSpec):
        return s
    if isinstance(s, dict):
        return SourceSpec(**s)
    return SourceSpec(path=s.path, remote=s.remote, task=s.task, proportion=s.proportion,
                      name=s.name)


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class StreamingBatches:
    def __init__(self, path: str, collate, micro_batch: int, dp_size: int, tp_replication: int,
                 shuffle: bool, seed: int, num_workers: int, state: Optional[Dict[str, Any]] = None,
                 *, sources: Optional[List[Any]] = None, cache_dir: str = "", epoch_size: int = 0,
                 image_size: Optional[int] = None, tokenizer: Optional[str] = None,
                 pin_memory: bool = False, prefetch_factor: int = 2):
        specs = [_spec(s) for s in sources] if sources else [
            SourceSpec(path=path, task="auto", name=path.rstrip("/").rsplit("/", 1)[-1] or "data")]
        info = resolve_streams(specs, cache_dir)
        self.sources = [s["name"] for s in info]
        tok = tokenizer or getattr(getattr(collate, "tok", None), "path", None) or "byte"
        self.ds = MixtureDataset(
            stream_info=info, image_size=image_size or getattr(collate, "size", None),
            chat=ChatRenderer(tok), shuffle=shuffle, shuffle_seed=seed, batch_size=micro_batch,
            epoch_size=epoch_size or None,
            # TP/PP peers are consecutive ranks: they must read the same samples.
            replication=tp_replication if tp_replication > 1 else None)
        self.collate, self.mb = collate, micro_batch
        self.global_batch = micro_batch * dp_size
        self.rank = dist.get_rank() if _dist_on() else 0
        self.world = dist.get_world_size() if _dist_on() else 1
        self.replication = max(tp_replication, 1)
        # Workers decode and resize (MixtureDataset) ahead of the step, prefetch_factor raw
        # micro-batches each. The DataLoader's own pin_memory would pin lists of samples: the
        # collated tensors are pinned in __next__ instead.
        extra = {"prefetch_factor": prefetch_factor} if num_workers > 0 else {}
        self.loader = DataLoader(self.ds, batch_size=micro_batch, collate_fn=_as_list,
                                 num_workers=num_workers, drop_last=True, persistent_workers=False,
                                 **extra)
        self.pin = pin_memory and torch.cuda.is_available()
        self.errors: Counter = Counter()
        self._reset_epoch(0)
        self._it = None
        self._replay_to, self._loaded = None, None
        if state:
            self._load(state)

    # ---- epoch bookkeeping -------------------------------------------------------------
    def _reset_epoch(self, epoch: int) -> None:
        self.epoch, self.out, self.raw = epoch, 0, 0
        self.fifo: deque = deque()                         # (raw index, sample), not yet emitted
        self.recent: deque = deque(maxlen=self.mb)         # last mb good samples read
        self.cycle, self.exhausted = 0, False

    def _load(self, state: Dict[str, Any]) -> None:
        self._loaded = state
        self.epoch = int(state["epoch"])
        ranks = state.get("ranks")
        # the same ranks reading the same way: same world, DP split and TP/PP replication (a
        # TP <-> DP trade keeps the world size but changes what each rank reads)
        same = (ranks and len(ranks) == self.world
                and int(state.get("global_batch", self.global_batch)) == self.global_batch
                and int(state.get("replication", self.replication)) == self.replication)
        if same:
            me = ranks[self.rank]
            self.out = int(state.get("out", 0))
            self._replay_to = (int(me["raw"]), int(me["fifo"]), int(me["cycle"]), bool(me["exhausted"]))
            self.errors.update(me.get("errors", {}))
        else:
            consumed = self._consumed(state)
            if consumed is not None:
                # Another DP size, and every rank had emitted exactly what it read: the epoch
                # goes on from the samples consumed. Streaming orders samples over its
                # canonical nodes (kept in its state), not over ranks, so the new ranks split
                # the rest of the same order: nothing is seen twice or skipped.
                log.info("data: checkpoint has %d ranks, this run %d: resuming the epoch at "
                         "sample %d", len(ranks), self.world, consumed)
                self.out = self.raw = consumed // self.global_batch
                self.ds.load_state_dict({**state["streaming"], "sample_in_epoch": consumed})
                if self.rank == 0:  # the old ranks' counts, kept once
                    for r in ranks:
                        self.errors.update(r.get("errors", {}))
                return
            if ranks:
                log.warning("data: checkpoint has %d ranks, this run %d, and some rank held "
                            "refill samples (bad samples were skipped): resuming at the common "
                            "position (not sample-exact)", len(ranks), self.world)
            self.out = int(state["sample_in_epoch"]) // self.global_batch
        self.raw = int(state["sample_in_epoch"]) // self.global_batch
        self.ds.load_state_dict(state["streaming"])

    def _consumed(self, state: Dict[str, Any]) -> Optional[int]:
        """Samples of the epoch consumed when every rank had emitted all it read and its
        epoch was not cycling; None when a rank held leftovers (or an old state lacks it)."""
        ranks, old_gb = state.get("ranks"), state.get("global_batch")
        if not ranks or not old_gb:
            return None
        if any(r["fifo"] or r["cycle"] or r["exhausted"] or r["raw"] != state["out"] for r in ranks):
            return None
        consumed = int(state["out"]) * int(old_gb)
        if consumed % self.global_batch:
            return None
        return consumed

    def _start(self) -> None:
        self._it = iter(self.loader)
        if self._replay_to is None:
            self._loaded = None  # reading has begun: state_dict describes this run from now on
            return
        target, nfifo, cycle, exhausted = self._replay_to
        while self.raw < target:  # rebuild the FIFO exactly; errors were counted already
            batch = self._read()
            if batch is None:
                raise RuntimeError(f"data: resume replay ran out of samples at raw batch "
                                   f"{self.raw} < {target} (epoch {self.epoch})")
            self._ingest(batch, count=False)
        while len(self.fifo) > nfifo:
            self.fifo.popleft()
        self.cycle, self.exhausted = cycle, exhausted
        self._replay_to, self._loaded = None, None

    # ---- reading -----------------------------------------------------------------------
    def _read(self):
        try:
            batch = next(self._it)
        except StopIteration:
            return None
        self.raw += 1
        return batch

    def _ingest(self, batch, count: bool) -> None:
        for s in batch:
            if "__bad__" in s:
                if count:
                    self.errors[s["source"]] += 1
                    if self.errors[s["source"]] <= LOG_FIRST_BAD:
                        log.warning("data: skipped bad sample %s of %s: %s", s.get("id"),
                                    s["source"], s["__bad__"])
                continue
            self.fifo.append((self.raw - 1, s))
            self.recent.append((self.raw - 1, s))

    def next_samples(self) -> list:
        """The next micro-batch as decoded samples (before the collator)."""
        if self._it is None:
            self._start()
        while not self.exhausted and len(self.fifo) < self.mb:
            batch = self._read()
            if batch is None:
                self.exhausted = True
            else:
                self._ingest(batch, count=True)
        if self.exhausted and self.out >= self.raw:  # epoch done on every rank at this call
            self._reset_epoch(self.epoch + 1)
            self._it = iter(self.loader)
            return self.next_samples()
        take = min(self.mb, len(self.fifo))
        samples = [self.fifo.popleft()[1] for _ in range(take)]
        if take < self.mb:  # end of the partition: owed batches cycle the recent good samples
            if not self.recent:
                raise RuntimeError(f"data: no decodable sample in epoch {self.epoch} on rank "
                                   f"{self.rank}; see the bad-sample warnings")
            for _ in range(self.mb - take):
                samples.append(self.recent[self.cycle % len(self.recent)][1])
                self.cycle += 1
        self.out += 1
        return samples

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.collate(self.next_samples())
        if self.pin:  # page-locked: the trainer's non_blocking copy overlaps with compute
            batch = {k: v.pin_memory() for k, v in batch.items()}
        return batch

    # ---- state and metrics -------------------------------------------------------------
    def _gather(self, obj) -> list:
        if not _dist_on():
            return [obj]
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    def state_dict(self) -> Dict[str, Any]:
        """Collective when distributed: every rank must call it (the trainer does, at saves)."""
        if self._loaded is not None:  # resumed but not started: the state is unchanged
            return self._loaded
        back = self.raw - self.recent[0][0] if self.recent else 0
        mine = {"raw": self.raw, "back": back, "fifo": len(self.fifo), "cycle": self.cycle,
                "exhausted": self.exhausted, "errors": dict(self.errors)}
        ranks = self._gather(mine)
        pos = min(r["raw"] - r["back"] for r in ranks) * self.global_batch
        st = self.ds.state_dict(pos, from_beginning=True)
        st["epoch"] = self.epoch
        return {"epoch": self.epoch, "sample_in_epoch": pos, "out": self.out,
                "global_batch": self.global_batch, "replication": self.replication,
                "streaming": st, "ranks": ranks}

    def error_counts(self, all_ranks: bool = False) -> Dict[str, int]:
        """Bad samples skipped so far (this run and the runs it resumed), per source name.
        all_ranks=True sums over data-parallel replicas; it is a collective (call on every rank)."""
        if not all_ranks:
            return {name: int(self.errors.get(name, 0)) for name in self.sources}
        total: Counter = Counter()
        for c in self._gather(dict(self.errors)):
            total.update(c)
        return {name: int(total.get(name, 0)) // self.replication for name in self.sources}
