"""Streaming batches from MDS with mosaicml-streaming, with an exactly resumable position.

The position is (epoch, samples consumed in the epoch across all data-parallel ranks); it
goes into checkpoints and is handed back to StreamingDataset.load_state_dict on resume.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from torch.utils.data import DataLoader


class StreamingBatches:
    def __init__(self, path: str, collate, micro_batch: int, dp_size: int, tp_replication: int,
                 shuffle: bool, seed: int, num_workers: int, state: Optional[Dict[str, Any]] = None):
        from streaming import StreamingDataset

        remote, local = (path, None) if "://" in path else (None, path)
        if remote:  # shards from object storage are cached next to the run
            import hashlib
            import tempfile
            local = f"{tempfile.gettempdir()}/hydra_mds_cache/{hashlib.sha1(path.encode()).hexdigest()[:12]}"
        self.ds = StreamingDataset(
            local=local, remote=remote, shuffle=shuffle, shuffle_seed=seed, batch_size=micro_batch,
            # TP peers are consecutive ranks: they must read the same samples.
            replication=tp_replication if tp_replication > 1 else None)
        self.global_batch = micro_batch * dp_size
        self.epoch, self.sample_in_epoch = 0, 0
        if state:
            self.epoch, self.sample_in_epoch = int(state["epoch"]), int(state["sample_in_epoch"])
            self.ds.load_state_dict(state["streaming"])
        self.loader = DataLoader(self.ds, batch_size=micro_batch, collate_fn=collate,
                                 num_workers=num_workers, drop_last=True,
                                 persistent_workers=False)
        self._it = iter(self.loader)

    def __iter__(self):
        return self

    def __next__(self):
        try:
            batch = next(self._it)
        except StopIteration:  # epoch boundary: streaming advances its own epoch counter
            self.epoch, self.sample_in_epoch = self.epoch + 1, 0
            self._it = iter(self.loader)
            batch = next(self._it)
        self.sample_in_epoch += self.global_batch
        return batch

    def state_dict(self) -> Dict[str, Any]:
        st = self.ds.state_dict(self.sample_in_epoch, from_beginning=True)
        st["epoch"] = self.epoch
        return {"epoch": self.epoch, "sample_in_epoch": self.sample_in_epoch, "streaming": st}
