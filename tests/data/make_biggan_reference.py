"""Recipe of tests/data/biggan_*.pth and tests/data/biggan_reference.safetensors.

The reference is ajbrock/BigGAN-PyTorch itself (not labelfactory): its
``BigGAN.Generator`` is built at tiny configs with the TF-Hub converter's
settings (``TFHub/converter.py:get_config``: G_shared, BN_eps = SN_eps = 1e-4,
one SV, one power iteration), every parameter and buffer is randomised (``u0``,
``sv0``, stored BN statistics, attention ``gamma``), and in eval mode its
images and the output of every block module (GBlock, then Attention) are
recorded for fixed z and classes. Each ``.pth`` is ``torch.save(G.state_dict())``
exactly as BigGAN-PyTorch writes ``G.pth``.

The safetensors file also holds ``scipy.stats.truncnorm.rvs(-2, 2, size=(1, dim),
random_state=RandomState(seed)) * truncation`` for a few seeds (the sampling of
pytorch-pretrained-biggan's ``truncated_noise_sample`` and the TF-Hub colab).

Produced with BigGAN-PyTorch at commit 98459431a5d618d644d54cd1e9fceb1e5045648d and scipy 1.17.1:
    git --git-dir=<fetched BigGAN-PyTorch> archive HEAD | tar -x -C /tmp/bgp
    pip install --target /tmp/scipy_pkgs scipy
    PYTHONPATH=/tmp/bgp:/tmp/scipy_pkgs python tests/data/make_biggan_reference.py
"""

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from scipy.stats import truncnorm

import BigGAN  # BigGAN-PyTorch's module, from PYTHONPATH

HERE = Path(__file__).parent
CONFIGS = {
    # name: (resolution, G_ch, dim_z, shared_dim, n_classes, G_attn, hier)
    "biggan32_hier": (32, 4, 20, 8, 5, "16", True),
    "biggan64_hier": (64, 1, 16, 6, 4, "16", True),
    "biggan32_flat": (32, 4, 12, 8, 3, "8", False),
}
TRUNCNORM = {"seeds": [0, 1, 7, 123456], "dim": 20, "truncation": 0.6}


def build(resolution, ch, dim_z, shared_dim, n_classes, attn, hier, seed):
    torch.manual_seed(seed)
    g = BigGAN.Generator(G_ch=ch, dim_z=dim_z, resolution=resolution, G_attn=attn, n_classes=n_classes,
                         G_shared=True, shared_dim=shared_dim, hier=hier, BN_eps=1e-4, SN_eps=1e-4,
                         num_G_SVs=1, num_G_SV_itrs=1, G_init="ortho", skip_init=True, no_optim=True)
    with torch.no_grad():
        for name, t in g.state_dict().items():
            if name.endswith("stored_var"):
                t.uniform_(0.5, 1.5)
            elif name.endswith("stored_mean") or name.endswith(".bias"):
                t.normal_(0.0, 0.2)
            elif name.endswith("gamma"):
                t.fill_(0.8)
            elif name.endswith("sv0"):
                t.uniform_(2.0, 3.0)  # a training-time record: must not be used to normalise
            else:
                t.normal_()
    return g.eval()


def record(name: str, g, seed: int, features: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(2, g.dim_z, generator=gen)
    y = torch.randint(0, g.n_classes, (2,), generator=gen)
    feats, hooks = {}, []
    for i, blocklist in enumerate(g.blocks):
        for j, block in enumerate(blocklist):
            key = f"block{i}" if j == 0 else f"block{i}.attention"
            hooks.append(block.register_forward_hook(lambda m, a, o, key=key: feats.__setitem__(key, o.clone())))
    with torch.no_grad():
        img = g(z, g.shared(y))
    for h in hooks:
        h.remove()
    out = {f"{name}/z": z, f"{name}/classes": y, f"{name}/images": img}
    if features:
        out.update({f"{name}/features/{k}": v for k, v in feats.items()})
    return out


def main() -> None:
    ref: dict[str, torch.Tensor] = {}
    for k, (name, cfg) in enumerate(CONFIGS.items()):
        g = build(*cfg, seed=100 + k)
        torch.save(g.state_dict(), HERE / f"{name}.pth")
        ref.update(record(name, g, seed=200 + k, features=cfg[-1]))  # block outputs of the hier ones
    values = np.concatenate([truncnorm.rvs(-2, 2, size=(1, TRUNCNORM["dim"]), random_state=np.random.RandomState(s))
                             for s in TRUNCNORM["seeds"]]) * TRUNCNORM["truncation"]
    ref["truncnorm/seeds"] = torch.tensor(TRUNCNORM["seeds"])
    ref["truncnorm/values"] = torch.from_numpy(values)
    save_file({k: v.contiguous() for k, v in ref.items()}, str(HERE / "biggan_reference.safetensors"))


if __name__ == "__main__":
    main()
