"""Generator backends behind one registry (see :mod:`.base` for the interface)."""

from .base import GENERATORS, UNCONDITIONAL, GeneratorBackend, Synthesis, content_hash, images_to_uint8
from . import stylegan2  # noqa: F401  (registers "stylegan2")

__all__ = ["GENERATORS", "UNCONDITIONAL", "GeneratorBackend", "Synthesis", "content_hash", "images_to_uint8"]
