"""Generator backends behind one registry (see :mod:`.base` for the interface)."""

from .base import GENERATORS, UNCONDITIONAL, GeneratorBackend, Synthesis, content_hash, images_to_uint8
from . import stylegan2  # noqa: F401  (registers "stylegan2")
from . import biggan  # noqa: F401  (registers "biggan")
from . import biggan_deep  # noqa: F401  (registers "biggan-deep" and its checkpoint format)
from . import vqgan  # noqa: F401  (registers "vqgan" and the taming-transformers checkpoint format)
from . import stylegan1  # noqa: F401  (registers "stylegan1" and its checkpoint format)
from . import torch_module  # noqa: F401  (registers "torch-module": a user's nn.Module class)

__all__ = ["GENERATORS", "UNCONDITIONAL", "GeneratorBackend", "Synthesis", "content_hash", "images_to_uint8"]
