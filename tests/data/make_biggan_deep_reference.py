"""Recipe of tests/data/biggan_deep/ (a tiny BigGAN-deep in pytorch-pretrained-biggan's own
format) and tests/data/biggan_deep_reference.safetensors (that package's outputs for it).

Built and evaluated with the upstream package itself, not with labelfactory:
``pytorch-pretrained-biggan`` 0.1.1 (and scipy, which its ``truncated_noise_sample``
uses) installed outside the project's venv, e.g.
    pip install --no-deps --target /tmp/ppb pytorch-pretrained-biggan==0.1.1 scipy
    PYTHONPATH=/tmp/ppb .venv/bin/python tests/data/make_biggan_deep_reference.py
(torch 2.14.1, scipy 1.17.1, numpy 2.4). boto3/botocore, which the package imports
for S3 downloads, are stubbed: nothing is downloaded.

The model is the package's ``BigGAN`` for CONFIG (the 128 px layer pattern cut down
to 32 px, channel_width 4) built after ``torch.manual_seed(0)``; on top of its default
init, biases, class embeddings, attention gamma, the output BN's affine and the
``running_means``/``running_vars`` (different at each of the 51 truncation grid
points) are re-drawn so every term matters. Spectral-norm vectors get 3 power
iterations from the package's random ``u``, so sigma = u·Wv is not the exact top
singular value: a reimplementation must use the stored u, v. It is saved with
``torch.save(state_dict)`` + ``BigGANConfig.to_json_string()`` as the package's
converter does, reloaded with ``BigGAN.from_pretrained(folder)``, put in eval mode
and run. The reference file holds ``seeds`` and ``classes`` (int64, SEEDS and
CLASSES); per truncation psi in TRUNCATIONS ``z/<psi>``, the package's
``truncated_noise_sample(1, z_dim, psi, seed)`` stacked over the seeds, and
``image/<psi>`` = ``BigGAN(z, one_hot(classes), psi)``; and ``features/<layer>``, the
output of every GenBlock (``block{i}``) and of the attention (``block{i}.attention``,
after block i) from forward hooks, for the first sample at FEATURE_TRUNCATION.
"""

import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

for name in ("boto3", "botocore", "botocore.exceptions"):
    sys.modules.setdefault(name, types.ModuleType(name))
sys.modules["botocore.exceptions"].ClientError = Exception

from pytorch_pretrained_biggan import BigGAN, BigGANConfig, truncated_noise_sample  # noqa: E402
from pytorch_pretrained_biggan.model import SelfAttn  # noqa: E402

HERE = Path(__file__).parent
FOLDER = HERE / "biggan_deep"
CONFIG = dict(output_dim=32, z_dim=8, class_embed_dim=8, channel_width=4, num_classes=5,
              layers=[(False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 4), (False, 4, 2), (True, 2, 1)],
              attention_layer_position=4, eps=1e-4, n_stats=51)
SEEDS = [3, 11]
CLASSES = [1, 4]
# grid points (0.7, 1.0) and between them (0.333: coef 0.65; 0.55: coef 0.5)
TRUNCATIONS = [0.333, 0.55, 0.7, 1.0]
FEATURE_TRUNCATION = 0.55


def randomise(model: BigGAN) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if hasattr(mod, "weight_u"):
                w = mod.weight_orig.reshape(mod.weight_orig.shape[0], -1)
                u = mod.weight_u
                for _ in range(3):
                    v = torch.nn.functional.normalize(w.t() @ u, dim=0)
                    u = torch.nn.functional.normalize(w @ v, dim=0)
                mod.weight_u.copy_(u)
                mod.weight_v.copy_(v)
        for name, t in model.state_dict().items():
            if name.endswith("running_means"):
                t.copy_(0.3 * torch.randn(t.shape, generator=g))
            elif name.endswith("running_vars"):
                t.copy_(0.5 + 1.5 * torch.rand(t.shape, generator=g))
            elif name.endswith("bias") or name == "embeddings.weight":
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
            elif name == "generator.bn.weight":
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            elif name.endswith("gamma"):
                t.fill_(0.8)


def tap_names(model: BigGAN) -> list[str]:
    names, block = [], 0
    for layer in model.generator.layers:
        if isinstance(layer, SelfAttn):
            names.append(f"block{block - 1}.attention")
        else:
            names.append(f"block{block}")
            block += 1
    return names


def make() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    config = BigGANConfig(**CONFIG)
    model = BigGAN(config)
    randomise(model)
    FOLDER.mkdir(exist_ok=True)
    torch.save(model.state_dict(), FOLDER / "pytorch_model.bin")
    (FOLDER / "config.json").write_text(config.to_json_string())

    model = BigGAN.from_pretrained(str(FOLDER)).eval()
    one_hot = torch.from_numpy(np.eye(CONFIG["num_classes"], dtype=np.float32)[CLASSES])
    out: dict[str, torch.Tensor] = {"seeds": torch.tensor(SEEDS), "classes": torch.tensor(CLASSES)}
    with torch.no_grad():
        for psi in TRUNCATIONS:
            z = np.concatenate([truncated_noise_sample(1, CONFIG["z_dim"], psi, s) for s in SEEDS])
            out[f"z/{psi}"] = torch.from_numpy(z)
            out[f"image/{psi}"] = model(out[f"z/{psi}"], one_hot, psi)
        feats = {}
        hooks = [layer.register_forward_hook(lambda m, i, o, n=n: feats.__setitem__(n, o))
                 for n, layer in zip(tap_names(model), model.generator.layers)]
        model(out[f"z/{FEATURE_TRUNCATION}"][:1], one_hot[:1], FEATURE_TRUNCATION)
        for h in hooks:
            h.remove()
    out.update({f"features/{k}": v.contiguous() for k, v in feats.items()})
    return out


if __name__ == "__main__":
    save_file(make(), str(HERE / "biggan_deep_reference.safetensors"))
