"""Recipe of tests/data/conditional_stylegan2_reference.safetensors: NVIDIA's own
forward of two tiny class-conditional StyleGAN2-ADA generators.

Each case's weights are drawn by ``formats.make_nvidia_pickle`` (the stand-ins
pickle them as NVIDIA's training loop does; the test rebuilds the pickle from the
stored weights). The images come from stylegan2-ada-pytorch's unmodified
``training/networks.py`` (commit d72cc7d, run on CPU where its custom ops use
their reference PyTorch paths) with those weights loaded strictly:
``G(z, one_hot(class), truncation_psi=psi, noise_mode='const', force_fp32=True)``,
the one-hot label built as in its ``generate.py``. Stored: ``<case>/weights/<name>``
(NVIDIA's names), ``z``, ``classes`` and ``<case>/image/psi<psi>``. Re-run only on
purpose (a re-run with torch 2.14 on CPU wrote the same file byte for byte):
    git clone https://github.com/NVlabs/stylegan2-ada-pytorch /tmp/nv && git -C /tmp/nv checkout d72cc7d
    PYTHONPATH=src:tests python tests/data/make_conditional_stylegan2_reference.py /tmp/nv
"""

import importlib
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from formats import make_nvidia_pickle

ARCH = dict(size=16, z_dim=12, w_dim=10, n_mlp=2, channel_base=96, channel_max=24)
CASES = {  # c_dim 10 as NVIDIA's CIFAR-10 model; the second embeds classes narrower than w
    "embed_w": dict(c_dim=10, seed=5),
    "embed6_clamp": dict(c_dim=10, embed_features=6, conv_clamp=0.5, seed=6),
}
CLASSES = [0, 3, 7, 9]  # rows 1 and 2 share one z: they differ by class alone
PSIS = (1.0, 0.6)


def latents() -> torch.Tensor:
    z = torch.randn(len(CLASSES), ARCH["z_dim"], generator=torch.Generator().manual_seed(11))
    z[2] = z[1]
    return z


def nvidia_forward(networks, case: dict, weights: dict, z: torch.Tensor) -> dict[str, torch.Tensor]:
    G = networks.Generator(
        z_dim=ARCH["z_dim"], c_dim=case["c_dim"], w_dim=ARCH["w_dim"], img_resolution=ARCH["size"], img_channels=3,
        mapping_kwargs=dict(num_layers=ARCH["n_mlp"], embed_features=case.get("embed_features")),
        synthesis_kwargs=dict(channel_base=ARCH["channel_base"], channel_max=ARCH["channel_max"], num_fp16_res=1,
                              fp16_channels_last=True, conv_clamp=case.get("conv_clamp"), architecture="skip"))
    G.load_state_dict(weights, strict=True)
    G.eval()
    label = torch.zeros([len(CLASSES), case["c_dim"]])
    label[torch.arange(len(CLASSES)), CLASSES] = 1
    with torch.no_grad():
        return {f"psi{psi}": G(z, label, truncation_psi=psi, noise_mode="const", force_fp32=True) for psi in PSIS}


def make(nvidia_src: Path) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        weights = {name: make_nvidia_pickle(Path(tmp) / f"{name}.pkl", Path(tmp) / "standins", **ARCH, **case)
                   for name, case in CASES.items()}
    sys.path.insert(0, str(nvidia_src))  # the stand-ins are gone from sys.modules: import NVIDIA's own
    importlib.invalidate_caches()
    from training import networks

    z = latents()
    out = {"z": z, "classes": torch.tensor(CLASSES)}
    for name, case in CASES.items():
        out.update({f"{name}/weights/{k}": v.contiguous() for k, v in weights[name].items()})
        out.update({f"{name}/image/{k}": v for k, v in nvidia_forward(networks, case, weights[name], z).items()})
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    save_file(make(Path(sys.argv[1])), str(Path(__file__).with_name("conditional_stylegan2_reference.safetensors")))
