"""Measured activation memory: bytes of the tensors autograd saves for backward, per model part
(unique storages, parameters excluded). The planner's activation model is checked against this."""
from __future__ import annotations

import contextlib

import torch


class SavedTensorBytes:
    """with SavedTensorBytes(model) as s: loss = model(batch) -> s.total, s.by_part"""

    def __init__(self, model: torch.nn.Module, parts: dict | None = None):
        self.model = model
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set = set()
        self.by_part: dict = {}
        self.current = ["other"]
        self.parts = parts if parts is not None else (
            model.part_modules() if hasattr(model, "part_modules") else {})
        self._handles = []
        self._stack = contextlib.ExitStack()

    def _pack(self, t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in self.param_ptrs and ptr not in self.seen and st.nbytes() > 0:
            self.seen.add(ptr)
            key = self.current[-1]
            self.by_part[key] = self.by_part.get(key, 0) + st.nbytes()
        return t

    def _enter_hook(self, name):
        def hook(mod, args):
            self.current.append(name)
        return hook

    def _exit_hook(self, mod, args, out):
        self.current.pop()

    @property
    def total(self) -> int:
        return sum(self.by_part.values())

    def __enter__(self):
        for name, mods in self.parts.items():
            for mod in mods:
                self._handles.append(mod.register_forward_pre_hook(self._enter_hook(name)))
                self._handles.append(mod.register_forward_hook(self._exit_hook))
        self._stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        for h in self._handles:
            h.remove()
