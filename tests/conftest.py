"""Shared fixtures."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from helpers import tiny_generator  # noqa: E402


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
