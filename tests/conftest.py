"""Shared fixtures."""

from __future__ import annotations

import collections
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from helpers import tiny_generator  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Files with more end-to-end tests first, each file's tests in order: under `make test`
    (`-n auto --dist loadfile`) the long files start at once and the short ones fill in behind."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


@pytest.fixture
def tiny_backend():
    return tiny_generator()


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (small models run fastest so; parallel
    pytest workers do not oversubscribe), restoring the setting after."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
