"""Recipe of tests/data/stylegan2_reference.safetensors (the saved forward of a tiny StyleGAN2).

Weights are drawn from seed 1234 (non-zero noise strengths and biases so every
term of the forward matters); the file holds the weights, latents z, and the
expected image and features for truncation 0.7 with constant noise. Re-run only
when the architecture changes on purpose:
    PYTHONPATH=src python tests/data/make_stylegan2_reference.py
"""

from pathlib import Path

import torch
from safetensors.torch import save_file

from labelfactory.generators.stylegan2 import Generator, StyleGAN2Config

CONFIG = dict(size=16, style_dim=16, n_mlp=2, channels={4: 16, 8: 12, 16: 8})
TRUNCATION = 0.7


def make() -> dict[str, torch.Tensor]:
    torch.manual_seed(1234)
    g = Generator(StyleGAN2Config(**CONFIG))
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight") or name.endswith("activate.bias") or name.endswith(".bias"):
                p.normal_(0.0, 0.3)
        g.latent_avg.normal_()
    z = torch.randn(3, CONFIG["style_dim"])
    with torch.no_grad():
        img, feats = g(z, truncation=TRUNCATION, noise_mode="const", return_features=True)
    out = {f"weights/{k}": v.contiguous() for k, v in g.state_dict().items()}
    out["z"] = z
    out["image"] = img
    out.update({f"features/{k}": v for k, v in feats.items()})
    return out


if __name__ == "__main__":
    save_file(make(), str(Path(__file__).with_name("stylegan2_reference.safetensors")))
