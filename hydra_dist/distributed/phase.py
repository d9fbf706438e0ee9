"""What this rank is doing right now, named in the error when a collective times out or fails
(a hung all-reduce otherwise reads as a bare gloo/NCCL error from deep inside a library)."""
from __future__ import annotations


class Phase:
    current = "start-up"

    @classmethod
    def set(cls, name: str) -> None:
        cls.current = name
