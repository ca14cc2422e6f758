"""Generator backends behind one registry (see :mod:`.base` for the interface)."""

from labelfactory.generators import (
    biggan,  # noqa: F401  (registers "biggan")
    biggan_deep,  # noqa: F401  (registers "biggan-deep" and its checkpoint format)
    diffusers_unet,  # noqa: F401  (registers "diffusers-unet" and the diffusers folder format)
    guided_diffusion,  # noqa: F401  (registers "guided-diffusion" and its state-dict format)
    nvidia_pickle,  # noqa: F401  (registers the "stylegan2-ada-pickle" checkpoint format)
    stable_diffusion,  # noqa: F401  (registers "stable-diffusion" and the Stable Diffusion folder format)
    stylegan1,  # noqa: F401  (registers "stylegan1" and its checkpoint format)
    stylegan2,  # noqa: F401  (registers "stylegan2")
    torch_module,  # noqa: F401  (registers "torch-module": a user's nn.Module class)
    vqgan,  # noqa: F401  (registers "vqgan" and the taming-transformers checkpoint format)
)
from labelfactory.generators.base import (
    GENERATORS,
    UNCONDITIONAL,
    GeneratorBackend,
    Synthesis,
    content_hash,
    images_to_uint8,
)

__all__ = ["GENERATORS", "UNCONDITIONAL", "GeneratorBackend", "Synthesis", "content_hash", "images_to_uint8"]
