"""diffusers UNet2DModel folders against diffusers' own pipelines (DDIMPipeline, DDPMPipeline).

The tiny UNet is built here from a fixed seed with diffusers' classes and saved
with ``save_pretrained``, as a user's folder would be. The backend runs diffusers' own
modules and schedulers, so on one machine the samples came out bit-identical (max
difference 0.0 on a 2-core EPYC, December 2026); the tolerances allow float32 rounding
where batch layout or kernels differ: features ``2e-6 * max|ref|`` (one UNet pass),
samples ``5e-5`` absolute in [0, 1] (the pipelines' output scale; several UNet passes
compound per-pass rounding).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from labelfactory.cli import main
from labelfactory.generators.loading import convert_checkpoint, load_generator

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FEATURE_TOL, SAMPLE_TOL = 2e-6, 5e-5
SEEDS, CLASSES, TRAIN_STEPS = [11, 12], [1, 4], 50


class _Labelled(diffusers.UNet2DModel):
    """The UNet given fixed class labels, so that the unconditional pipelines run a class-conditional UNet."""

    labels = None

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        return super().forward(sample, timestep, class_labels=self.labels, return_dict=return_dict)


def _unet(num_classes: int | None):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
                                 num_class_embeds=num_classes).eval()


@pytest.fixture(scope="module", params=[None, 5], ids=["uncond", "cond"])
def folder(request, tmp_path_factory):
    """(pipeline folder, the UNet that runs in diffusers' pipelines, classes or None)."""
    unet = _unet(request.param)
    path = tmp_path_factory.mktemp("pipe") / "ddpm"
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=TRAIN_STEPS)) \
        .save_pretrained(path)
    if request.param is None:
        return path, unet, None
    labelled = _Labelled.from_config(unet.config)
    labelled.load_state_dict(unet.state_dict())
    labelled.labels = torch.tensor(CLASSES)
    return path, labelled.eval(), torch.tensor(CLASSES)


def _pipeline_output(unet, path, pipeline, **kw) -> np.ndarray:
    scheduler = diffusers.DDPMScheduler.from_pretrained(path / "scheduler")
    pipe = getattr(diffusers, pipeline)(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    return pipe(batch_size=len(SEEDS), generator=gens, output_type="np", **kw).images


def _ours(backend, y, sampler, steps, eta=0.0) -> np.ndarray:
    """The backend's samples from the seeds' x_T, step noise continuing each seed's generator
    (as the pipelines draw x_T and then step noise from one generator per sample)."""
    backend.set_sampling(sampler, steps, eta)
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    x_t = torch.cat([torch.randn((1, *backend.latent_shape), generator=g) for g in gens])
    assert torch.equal(x_t, torch.from_numpy(backend.draw_latents(SEEDS)))
    with torch.no_grad():
        x = backend.sample(x_t, y, gens)
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("pipeline,sampler,steps,eta", [
    ("DDIMPipeline", "ddim", 1, 0.0),  # one denoising step
    ("DDIMPipeline", "ddim", 10, 0.0),
    ("DDIMPipeline", "ddim", 10, 0.5),
    ("DDPMPipeline", "ddpm", TRAIN_STEPS, 0.0),
])
def test_samples_match_the_pipelines(folder, pipeline, sampler, steps, eta):
    path, unet, y = folder
    backend = load_generator(path)
    kw = {"num_inference_steps": steps, **({"eta": eta} if pipeline == "DDIMPipeline" else {})}
    want = _pipeline_output(unet, path, pipeline, **kw)
    got = _ours(backend, y, sampler, steps, eta)
    assert np.abs(got - want).max() <= SAMPLE_TOL


def test_the_folders_own_scheduler(tmp_path):
    """``ddpm`` runs the folder's scheduler, whatever its class: PNDM (deterministic) as PNDMPipeline."""
    unet = _unet(None)
    diffusers.PNDMPipeline(unet=unet, scheduler=diffusers.PNDMScheduler(num_train_timesteps=TRAIN_STEPS)) \
        .save_pretrained(tmp_path / "pndm")
    pipe = diffusers.PNDMPipeline.from_pretrained(tmp_path / "pndm")
    pipe.set_progress_bar_config(disable=True)
    want = pipe(batch_size=len(SEEDS), generator=[torch.Generator().manual_seed(s) for s in SEEDS],
                num_inference_steps=10, output_type="np").images
    assert np.abs(_ours(load_generator(tmp_path / "pndm"), None, "ddpm", 10) - want).max() <= SAMPLE_TOL


def test_features_per_step_and_block(folder):
    path, _, y = folder
    backend = load_generator(path)
    g = torch.Generator().manual_seed(3)
    images, noise = torch.rand((2, 3, 16, 16), generator=g) * 2 - 1, torch.randn((1, 3, 16, 16), generator=g)
    steps, blocks = [30, 5], ["up_blocks.1", "mid_block"]
    with torch.no_grad():
        got = backend.image_features(images, noise, y, steps, blocks)
    assert list(got) == ["t30.mid_block", "t30.up_blocks.1", "t5.mid_block", "t5.up_blocks.1"]
    scheduler = diffusers.DDPMScheduler.from_pretrained(path / "scheduler")
    kept = {}
    plain = _unet(None if y is None else 5)
    hooks = [plain.get_submodule(b).register_forward_hook(lambda m, i, o, b=b: kept.__setitem__(b, o)) for b in blocks]
    for step in steps:
        t = torch.tensor([step, step])
        with torch.no_grad():
            plain(scheduler.add_noise(images, noise.expand(2, -1, -1, -1), t), t, class_labels=y)
        for b in blocks:
            want = kept[b].numpy()
            assert got[f"t{step}.{b}"].shape[1:] == backend.block_shapes()[b]
            assert np.abs(got[f"t{step}.{b}"].numpy() - want).max() <= FEATURE_TOL * max(1.0, np.abs(want).max())
    for h in hooks:
        h.remove()


def test_canonical_round_trip(folder, tmp_path):
    from labelfactory.generators.fetch import fetch_checkpoint

    path, _, y = folder
    meta = convert_checkpoint(path, tmp_path / "d.safetensors")
    fetched = fetch_checkpoint(str(path / "model_index.json"), tmp_path / "f.safetensors")  # a config's url
    assert fetched["generator_hash"] == meta["generator_hash"]
    again = load_generator(tmp_path / "d.safetensors")
    assert meta["arch"] == "diffusers-unet" and again.generator_hash == load_generator(path).generator_hash
    again.set_sampling("ddim", 3)
    cls = None if y is None else y.numpy()
    z = again.draw_latents(SEEDS)
    both = again.render(z, cls, batch_size=2)
    alone = again.render(z[1:], None if cls is None else cls[1:], batch_size=1)
    assert np.abs(both[1:] - alone).max() <= SAMPLE_TOL
    feats = again.render_features(z[:1], None if cls is None else cls[:1])
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == again.feature_shapes()


def test_cli(folder, tmp_path):
    path, unet, y = folder
    cls = []
    if y is not None:
        np.save(tmp_path / "y.npy", y.numpy())
        cls = ["--classes", str(tmp_path / "y.npy")]
    np.save(tmp_path / "xt.npy", load_generator(path).draw_latents(SEEDS))
    assert main(["render", "--checkpoint", str(path), "--latents", str(tmp_path / "xt.npy"), *cls, "--sampler", "ddim",
                 "--sampling-steps", "10", "--device", "cpu", "--out", str(tmp_path / "img.npy")]) == 0
    got = (np.load(tmp_path / "img.npy") / 2 + 0.5).clip(0, 1).transpose(0, 2, 3, 1)
    assert np.abs(got - _pipeline_output(unet, path, "DDIMPipeline", num_inference_steps=10)).max() <= SAMPLE_TOL
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 16, 16), np.float32))
    np.save(tmp_path / "n.npy", np.ones((1, 3, 16, 16), np.float32))
    assert main(["features", "--checkpoint", str(path), "--images", str(tmp_path / "x.npy"), "--image-noise",
                 str(tmp_path / "n.npy"), *cls, "--steps", "7", "--blocks", "up_blocks.0", "--device", "cpu",
                 "--out", str(tmp_path / "f.npz")]) == 0
    assert np.load(tmp_path / "f.npz")["t7.up_blocks.0"].shape == (2, 64, 16, 16)


@pytest.mark.parametrize("case", ["no-scheduler", "no-weights", "block", "step", "stable-diffusion"])
def test_bad_input_is_one_line_and_writes_nothing(folder, tmp_path, capsys, case):
    path, _, y = folder
    bad = tmp_path / "pipe"
    shutil.copytree(path, bad)
    if case == "no-scheduler":
        shutil.rmtree(bad / "scheduler")
    elif case == "no-weights":
        (bad / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    elif case == "stable-diffusion":
        (bad / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                          "vae": ["diffusers", "AutoencoderKL"]}))
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 16, 16), np.float32))
    cls = []
    if y is not None:
        np.save(tmp_path / "y.npy", y.numpy()[:1])
        cls = ["--classes", str(tmp_path / "y.npy")]
    out = tmp_path / "f.npz"
    capsys.readouterr()
    assert main(["features", "--checkpoint", str(bad), "--images", str(tmp_path / "x.npy"), "--image-noise",
                 str(tmp_path / "x.npy"), *cls, "--steps", "50" if case == "step" else "5", "--blocks",
                 "up_blocks.7" if case == "block" else "mid_block", "--device", "cpu", "--out", str(out)]) == 1
    (message,) = capsys.readouterr().err.strip().splitlines()
    expected = {"no-scheduler": "lacks scheduler/scheduler_config.json", "no-weights": "lacks unet/diffusion_pytorch",
                "block": "unknown UNet blocks ['up_blocks.7']", "step": "outside the schedule [0, 50)",
                "stable-diffusion": "Stable Diffusion layout"}[case]
    assert "ERROR" in message and expected in message
    assert not out.exists() and list(tmp_path.glob("f.npz*")) == []
