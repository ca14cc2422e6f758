"""Shared fixtures."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from helpers import tiny_generator  # noqa: E402


@pytest.fixture
def tiny_backend():
    return tiny_generator()
