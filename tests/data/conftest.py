"""Fixtures for the data tests (helpers live in data_helpers.py)."""
from __future__ import annotations

import pytest

from data_helpers import build_tokenizer


@pytest.fixture(autouse=True)
def _clean_shm():
    from streaming.base.util import clean_stale_shared_memory
    clean_stale_shared_memory()
    yield


@pytest.fixture
def tiny_tokenizer(tmp_path):
    return build_tokenizer(tmp_path / "tok")
