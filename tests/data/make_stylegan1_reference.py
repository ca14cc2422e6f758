"""Recipe of tests/data/stylegan1_*.for_g_all.pt, stylegan1_*_avg_latent.npy and
tests/data/stylegan1_reference.safetensors.

The reference is DatasetGAN's release itself (not labelfactory): its
``models/stylegan1.py`` builds ``g_all = Sequential(g_mapping, truncation,
g_synthesis)`` exactly as ``train_interpreter.py:prepare_stylegan`` does, at tiny
widths: ``G_synthesis(dlatent_size=16, resolution=R, fmap_base, fmap_max)`` and
the release's ``G_mapping`` with its eight ``dense`` layers swapped for the
release's own ``MyLinear(16, 16, gain=sqrt(2), lrmul=0.01, use_wscale=True)``
(``G_mapping`` hard-codes 512). Weights keep the release's initialisation
(seeded); biases, ``const``, style biases and noise strengths are randomised so
that a misplaced tensor changes the image. Each ``.pt`` is
``torch.save(g_all.state_dict(), _use_new_zipfile_serialization=False)``: the
legacy pickle and the keys of the release's ``*.for_g_all.pt`` files.

Images and the ``result_list`` of ``G_synthesis`` (two maps per block) are
recorded as the release's ``latent_to_image`` computes them:
``g_synthesis(truncation(g_mapping(z)))``. Noise is set through the release's
own hook, ``NoiseLayer.noise``: zeros ("no noise") or recorded tensors. The
average latents are saved like ``make_training_data.py`` saves
``avg_latent_stylegan1.npy``: ``g_mapping(randn(8000, 16)).mean(0)``, ``[18, 16]``;
for the 128 px model each of its 18 rows is perturbed, so rows must not be mixed up.

- ``s32`` (32 px, channels 4:16 8:16 16:8 32:4): ``plain`` (psi 1, no noise,
  images + features), ``trunc`` (psi 0.7, ``max_layer`` 7 = the cat/bedroom
  cut-off, no noise), ``noise`` (psi 1, recorded noise, one map per layer in
  block order, ``epi1`` then ``epi2``);
- ``s128`` (128 px, channels 4:8 8:8 16:8 32:4 64:2 128:1; its 128 px block
  takes the release's fused transposed-conv upscale): ``trunc`` (psi 0.7,
  ``max_layer`` 8 = the car/face cut-off, no noise), image only.

Produced with nv-tlabs/datasetGAN_release at commit
588c5e9cd5f7d30cba7a0e15744ddfaf52d42c31 and torch 2.14.1 (CPU):
    git --git-dir=<fetched datasetGAN_release> show HEAD:models/stylegan1.py > /tmp/dsg/models/stylegan1.py
    touch /tmp/dsg/models/__init__.py
    PYTHONPATH=/tmp/dsg .venv/bin/python tests/data/make_stylegan1_reference.py
"""

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from models.stylegan1 import G_mapping, G_synthesis, MyLinear, Truncation  # the release's module

HERE = Path(__file__).parent
W = 16
MODELS = {  # name: (resolution, fmap_base, fmap_max)
    "s32": (32, 64, 16),
    "s128": (128, 64, 8),
}


def build(resolution: int, fmap_base: int, fmap_max: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    mapping = G_mapping()
    for i in range(8):
        setattr(mapping, f"dense{i}", MyLinear(W, W, gain=2 ** 0.5, lrmul=0.01, use_wscale=True))
    synthesis = G_synthesis(dlatent_size=W, resolution=resolution, fmap_base=fmap_base, fmap_max=fmap_max)
    g_all = nn.Sequential(OrderedDict([("g_mapping", mapping), ("truncation", Truncation(None, "cpu")),
                                       ("g_synthesis", synthesis)]))
    with torch.no_grad():
        for name, p in g_all.named_parameters():
            if name.startswith("g_mapping.") and name.endswith(".bias"):
                p.normal_(0.0, 20.0)  # times b_mul 0.01
            elif name.endswith("noise.weight"):
                p.uniform_(0.2, 0.8)
            elif name.endswith(".bias") or name.endswith(".const"):
                p.normal_(0.0, 0.3)
    return g_all.eval()


def noise_layers(g_all) -> list:
    return [epi.top_epi.noise for block in g_all.g_synthesis.blocks.values() for epi in (block.epi1, block.epi2)]


def run(g_all, z, psi: float, max_layer: int, avg, noise=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The release's ``latent_to_image`` (without its resizing): synthesis(truncation(mapping(z))),
    with one noise map per layer (default zeros, broadcast: no noise)."""
    noise = noise or [torch.zeros(1, 1, 1, 1) for _ in noise_layers(g_all)]
    g_all.truncation.avg_latent, g_all.truncation.max_layer, g_all.truncation.threshold = avg, max_layer, psi
    for layer, n in zip(noise_layers(g_all), noise, strict=True):
        layer.noise = n
    with torch.no_grad():
        return g_all.g_synthesis(g_all.truncation(g_all.g_mapping(z)))


def average_latent(g_all) -> torch.Tensor:
    with torch.no_grad():
        return g_all.g_mapping(torch.randn(8000, W)).mean(0)  # [18, W], as the release dumps it


def main() -> None:
    ref: dict[str, torch.Tensor] = {}
    gs = {name: build(*cfg, seed=10 + k) for k, (name, cfg) in enumerate(MODELS.items())}
    for name, g_all in gs.items():
        torch.save(g_all.state_dict(), HERE / f"stylegan1_{name}.for_g_all.pt", _use_new_zipfile_serialization=False)

    g, gen = gs["s32"], torch.Generator().manual_seed(1)
    z = torch.randn(2, W, generator=gen)
    avg = average_latent(g)
    np.save(HERE / "stylegan1_s32_avg_latent.npy", avg.numpy())
    img, feats = run(g, z, 1.0, 8, avg)
    ref.update({"s32/z": z, "s32/plain/images": img})
    ref.update({f"s32/plain/features/{i:02d}": f for i, f in enumerate(feats)})
    ref["s32/trunc/images"] = run(g, z, 0.7, 7, avg)[0]
    sizes = [int(f.shape[-1]) for f in feats[::2]]  # one resolution per block
    noise = [torch.randn(2, 1, r, r, generator=gen) for r in sizes for _ in range(2)]
    ref["s32/noise/images"] = run(g, z, 1.0, 8, avg, noise)[0]
    ref.update({f"s32/noise/noise/{i:02d}": n for i, n in enumerate(noise)})

    g = gs["s128"]
    z = torch.randn(1, W, generator=gen)
    avg = average_latent(g) + 0.5 * torch.randn(18, W, generator=gen)
    np.save(HERE / "stylegan1_s128_avg_latent.npy", avg.numpy())
    ref.update({"s128/z": z, "s128/trunc/images": run(g, z, 0.7, 8, avg)[0]})
    save_file({k: v.contiguous() for k, v in ref.items()}, str(HERE / "stylegan1_reference.safetensors"))


if __name__ == "__main__":
    main()
