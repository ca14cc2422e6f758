"""Make the guided-diffusion reference files of tests/test_guided_diffusion.py with the public code.

Runs yandex-research/ddpm-segmentation (commit 9a13776bb78d4753df6a561749f3274cd158297a) with its
guided_diffusion submodule, openai/guided-diffusion at the commit it pins
(27c20a8fab9cb472df5d6bdd6c8d11c8f430b924), on CPU, outside the project::

    git clone https://github.com/yandex-research/ddpm-segmentation SEG && cd SEG && git checkout 9a13776
    git submodule update --init guided_diffusion
    python tests/data/guided_diffusion/make_reference.py SEG tests/data/guided_diffusion

``dist_util`` imports ``blobfile`` and ``mpi4py`` at import time; one-process stand-ins are
installed here. Three tiny models (16 px, 100 steps) cover the flags: ``uncond`` (learned
sigma, scale-shift norm, resblock up/down, heads by channel count, linear schedule),
``cond`` (class-conditional, cosine schedule, additive embedding, conv up/down, the new
attention order, rescaled timesteps) and ``xstart`` (x0 prediction, two residual blocks per
level, other upsampling heads, flags respaced to 50 steps, which the extractor's x_t and the
ancestral sampler then use). Every tensor is drawn from :func:`reference_weights`
(guided-diffusion zero-initialises its output convs, which would make every output 0). The
checkpoints (``<name>.pt``, the plain ``torch.save(model.state_dict())`` ddpm-segmentation
loads) are 3 to 4 MB each, so they are not kept: the tests rebuild the same tensors from
:func:`reference_weights`, check them against the digest recorded here
(:func:`weights_digest`) and save them as such a ``.pt`` again. Written per model:
``<name>.flags.json`` and ``<name>.reference.npz``: the weights' digest, inputs, the features of
``FeatureExtractorDDPM`` per (step, block) (for ``cond``, its forward with the class
passed, which ddpm-segmentation's extractor does not do), one ``p_sample`` and one
``ddim_sample`` step, an ancestral sample through the flags' steps and 10-step DDIM samples (eta 0 and 0.5),
each after ``torch.manual_seed`` as noted.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

FLAGS = {
    "uncond": dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
                   num_heads=4, num_head_channels=16, num_heads_upsample=-1, learn_sigma=True, class_cond=False,
                   use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=False, dropout=0.1,
                   diffusion_steps=100, noise_schedule="linear", timestep_respacing="", use_kl=False,
                   predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False, use_checkpoint=False,
                   use_fp16=False),
    "cond": dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8,16",
                 num_heads=2, num_head_channels=-1, num_heads_upsample=-1, learn_sigma=False, class_cond=True,
                 use_scale_shift_norm=False, resblock_updown=False, use_new_attention_order=True, dropout=0.0,
                 diffusion_steps=100, noise_schedule="cosine", timestep_respacing="", use_kl=False,
                 predict_xstart=False, rescale_timesteps=True, rescale_learned_sigmas=False, use_checkpoint=False,
                 use_fp16=False),
    "xstart": dict(image_size=16, num_channels=32, num_res_blocks=2, channel_mult="1,2", attention_resolutions="8",
                   num_heads=2, num_head_channels=-1, num_heads_upsample=1, learn_sigma=True, class_cond=False,
                   use_scale_shift_norm=True, resblock_updown=False, use_new_attention_order=False, dropout=0.0,
                   diffusion_steps=100, noise_schedule="linear", timestep_respacing="50", use_kl=False,
                   predict_xstart=True, rescale_timesteps=False, rescale_learned_sigmas=False, use_checkpoint=True,
                   use_fp16=False),
}
WEIGHT_SEED = {"uncond": 1, "cond": 2, "xstart": 3}
FEATURE_STEPS = {"uncond": [5, 25], "cond": [10], "xstart": [20]}  # xstart: of its respaced 50
FEATURE_BLOCKS = {"uncond": [0, 2], "cond": [1, 3], "xstart": [1]}
CLASSES = [3, 998]
SAMPLE_SEEDS = [11, 12]
STEP_SEED = 7  # torch.manual_seed before the single steps
ETA_SEED = 8  # before each eta-0.5 DDIM sample


def reference_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Every tensor drawn in sorted name order from one seeded generator: matrices and convs
    ``randn / sqrt(fan_in)``, 1-d weights (the GroupNorms) ``1 + 0.1 randn``, biases ``0.1 randn``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        r = torch.randn(shape, generator=g)
        if len(shape) >= 2:
            out[name] = r / float(np.prod(shape[1:])) ** 0.5
        else:
            out[name] = 1 + 0.1 * r if name.endswith("weight") else 0.1 * r
    return out


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted names, shapes and float32 bytes of a state dict."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().float().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|".encode() + t.numpy().tobytes())
    return h.hexdigest()


def _stand_ins() -> None:
    """One-process ``mpi4py.MPI`` and ``blobfile`` for guided_diffusion.dist_util."""
    comm = types.SimpleNamespace(Get_rank=lambda: 0, bcast=lambda x, root=0: x, rank=0, size=1)
    mpi4py = types.ModuleType("mpi4py")
    mpi4py.MPI = types.SimpleNamespace(COMM_WORLD=comm)
    blobfile = types.ModuleType("blobfile")
    blobfile.BlobFile = open
    sys.modules.update({"mpi4py": mpi4py, "blobfile": blobfile})


def make(seg: Path, out: Path, name: str) -> None:
    from guided_diffusion.guided_diffusion.script_util import create_model_and_diffusion
    from src.feature_extractors import FeatureExtractorDDPM

    flags = FLAGS[name]
    model, diffusion = create_model_and_diffusion(**flags)
    model.load_state_dict(reference_weights({k: tuple(v.shape) for k, v in model.state_dict().items()},
                                            WEIGHT_SEED[name]))
    model.eval()
    ckpt = out / f"{name}.pt"
    torch.save(model.state_dict(), ckpt)
    (out / f"{name}.flags.json").write_text(json.dumps(flags, indent=1) + "\n")
    n, size = 2, flags["image_size"]
    cond = flags["class_cond"]
    y = torch.tensor(CLASSES) if cond else None
    kw = {"y": y} if cond else {}
    g = torch.Generator().manual_seed(100)
    images = (torch.rand((n, 3, size, size), generator=g) * 2 - 1)
    noise = torch.randn((n, 3, size, size), generator=g)
    ref = {"weights_digest": np.array(weights_digest(model.state_dict())), "images": images, "noise": noise}
    if cond:
        ref["classes"] = y

    # features: ddpm-segmentation's extractor (its forward, with y, for the class-conditional model)
    steps, blocks = FEATURE_STEPS[name], FEATURE_BLOCKS[name]
    ext = FeatureExtractorDDPM(steps=steps, blocks=blocks, model_path=str(ckpt), input_activations=False, **flags)
    with torch.no_grad():
        if cond:
            acts = []
            for t in steps:
                tt = torch.tensor([t])
                ext.model(ext.diffusion.q_sample(images, tt, noise=noise), ext.diffusion._scale_timesteps(tt), y=y)
                acts += [b.activations for b in ext.feature_blocks]
        else:
            acts = ext(images, noise=noise)
    i = 0
    for t in steps:
        for b in sorted(blocks):
            ref[f"feature.t{t}.output_blocks.{b}"] = acts[i]
            i += 1

    with torch.no_grad():
        # one reverse step of each sampler from a noisy image, at step 40 of the flags' (spaced) diffusion
        x = diffusion.q_sample(images, torch.tensor([40] * n), noise=noise)
        t = torch.tensor([40] * n)
        torch.manual_seed(STEP_SEED)
        ref["p_sample.t40"] = diffusion.p_sample(model, x, t, model_kwargs=kw)["sample"]
        torch.manual_seed(STEP_SEED)
        ref["ddim_sample.t40.eta0.5"] = diffusion.ddim_sample(model, x, t, model_kwargs=kw, eta=0.5)["sample"]
        # samples from x_T drawn after torch.manual_seed(seed), one per call as a seed addresses one sample
        ddim10 = create_model_and_diffusion(**{**flags, "timestep_respacing": "ddim10"})[1]
        for key, sampler, eta in (("ddpm", diffusion.p_sample_loop, None),
                                  ("ddim10", ddim10.ddim_sample_loop, 0.0),
                                  ("ddim10.eta0.5", ddim10.ddim_sample_loop, 0.5)):
            outs = []
            for j, seed in enumerate(SAMPLE_SEEDS):
                torch.manual_seed(seed)
                x_t = torch.randn((1, 3, size, size))
                if eta:
                    torch.manual_seed(ETA_SEED)
                extra = {} if eta is None else {"eta": eta}
                outs.append(sampler(model, (1, 3, size, size), noise=x_t,
                                    model_kwargs={"y": y[j : j + 1]} if cond else {}, **extra))
            ref[f"sample.{key}"] = torch.cat(outs)
    np.savez_compressed(out / f"{name}.reference.npz",
                        **{k: v if isinstance(v, np.ndarray) else v.numpy() for k, v in ref.items()})
    ckpt.unlink()


def main(argv: list[str]) -> None:
    seg, out = Path(argv[0]).resolve(), Path(argv[1]).resolve()
    _stand_ins()
    sys.path.insert(0, str(seg))
    torch.set_num_threads(1)
    for name in FLAGS:
        make(seg, out, name)


if __name__ == "__main__":
    main(sys.argv[1:])
