"""Typed configs from plain dicts: the one strict constructor of the dataclasses that read config sections."""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

T = TypeVar("T")


def strict_from_dict(cls: type[T], d: dict) -> T:
    """``cls(**d)``, refusing with one line the keys ``cls`` lacks (a typo would otherwise
    surface as a TypeError inside a job, or be dropped)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
    return cls(**d)
