"""The toy DDPM recipe (labelfactory.toybench.recipes.ddpm) and a diffusion model reusing another
task's annotated images (labelfactory.annotations.reuse.reuse_images): a two-step training run
that resumes, ships a guided-diffusion checkpoint and trains on the forward process the backend
reads its features with; the reused set is the images as they are, its features their taps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from labelfactory.annotations.annotation_set import AnnotationSet, load_annotation_set
from labelfactory.annotations.labels import LabelSet
from labelfactory.annotations.reuse import reuse_annotation_file, reuse_images
from labelfactory.features import FeatureStore, extract_image_features
from labelfactory.generators.guided_diffusion import GuidedDiffusionBackend
from labelfactory.generators.loading import load_generator
from labelfactory.toybench import world as toyworld
from labelfactory.toybench.recipes.ddpm import DDPMTrainConfig, finalize, noised, train, zero_output_convs
from labelfactory.toybench.recipes.recipe_cli import write_trained
from labelfactory.generators.guided_unet import GuidedUNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(size=16, num_channels=32, channel_mult="1,2", attention_resolutions="8", diffusion_steps=100, batch=4,
            warmup_steps=2, checkpoint_every=1, snapshot_every=100, snapshot_ddim_steps=2)


def test_training_resumes_and_ships_a_guided_diffusion_checkpoint(tmp_path):
    cfg = DDPMTrainConfig(**TINY, kimg=0.008)  # 2 steps
    state = train(cfg, tmp_path / "work", progress=False)
    first = torch.load(state, weights_only=True)
    assert first["step"] == 2
    longer = DDPMTrainConfig(**TINY, kimg=0.012)  # resumes at step 2 for one more
    train(longer, tmp_path / "work", progress=False)
    history = [json.loads(l) for l in (tmp_path / "work/history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 3]
    again = torch.load(state, weights_only=True)
    assert again["step"] == 3 and not torch.equal(again["unet"]["out.2.weight"], first["unet"]["out.2.weight"])
    straight = torch.load(train(longer, tmp_path / "straight", progress=False), weights_only=True)
    for k, v in straight["ema"].items():  # 2 steps, killed, 1 more = 3 steps at once
        assert torch.equal(again["ema"][k], v), k

    backend = finalize(longer, state)
    assert (tmp_path / "work/final_ema.png").exists()
    meta = write_trained(tmp_path / "ddpm.safetensors", backend, "labelfactory.toybench.recipes.ddpm", longer,
                         tmp_path / "work")
    loaded = load_generator(tmp_path / "ddpm.safetensors")
    assert isinstance(loaded, GuidedDiffusionBackend) and loaded.generator_hash == meta["generator_hash"]
    assert loaded.num_classes == 1000 and loaded.resolution == 16
    assert meta["arch_config"]["class_cond"] and meta["recipe"]["train_config"]["kimg"] == 0.012
    for k, v in again["ema"].items():
        assert torch.equal(loaded.module.state_dict()[k], v), k
    # the conv interpreter conditions on label_emb as on a BigGAN's class embedding
    assert torch.equal(loaded.class_embedding(), loaded.module.label_emb.weight)


def test_the_loss_noises_as_the_backend_reads_features():
    """The training target's x_t is the backend's: the taps of an image are the UNet's on exactly
    the x_t the recipe trained it to denoise."""
    cfg = DDPMTrainConfig(**TINY)
    backend = GuidedDiffusionBackend(GuidedUNet(cfg.model_flags()), cfg.model_flags())
    s = backend.flag_schedule
    ac = torch.from_numpy(np.cumprod(1.0 - backend.base_betas)).float()
    x0, noise = torch.rand(3, 3, 16, 16) * 2 - 1, torch.randn(3, 3, 16, 16)
    t = torch.tensor([0, 37, 99])
    want = s.at(s.sqrt_ac, t) * x0 + s.at(s.sqrt_1m_ac, t) * noise
    assert torch.allclose(noised(x0, t, noise, ac), want, atol=1e-6)


def test_output_convs_start_at_zero():
    cfg = DDPMTrainConfig(**TINY)
    unet = GuidedUNet(cfg.model_flags())
    zero_output_convs(unet)
    out, _ = unet(torch.randn(2, 3, 16, 16), torch.tensor([3, 50]), torch.tensor([0, 1]))
    assert out.abs().max() == 0  # as guided-diffusion's zero_module: the first prediction is ε = 0


def _unconditional_cars(size: int = 16, n: int = 4) -> AnnotationSet:
    images, _, parts = toyworld.render_batch(range(n), "car", size)
    return AnnotationSet(ids=[f"s{i:08d}" for i in range(n)], seeds=np.arange(n, dtype=np.int64),
                         classes=np.full(n, -1, np.int32), latents=np.zeros((n, 8), np.float32), images=images,
                         masks=parts, labels=LabelSet(tuple(toyworld.part_labels("car"))), generator_hash="gan",
                         truncation=1.0, noise="const")


def test_a_diffusion_model_reuses_the_annotated_images_as_they_are(tmp_path):
    cfg = DDPMTrainConfig(**TINY)
    backend = GuidedDiffusionBackend(GuidedUNet(cfg.model_flags()), cfg.model_flags())
    backend.set_feature_steps([5, 20], noise_seed=3)
    ann = _unconditional_cars()
    ann.save(tmp_path / "source.h5")
    summary = reuse_annotation_file(tmp_path / "source.h5", backend, tmp_path / "out.h5", tmp_path / "reuse.csv",
                                    tmp_path / "reuse.json", image_class=2)
    got = load_annotation_set(tmp_path / "out.h5")
    assert got.source == "images" and got.generator_hash == backend.generator_hash and got.ids == ann.ids
    assert np.array_equal(got.images, ann.images) and np.array_equal(got.masks, ann.masks)
    assert got.classes.tolist() == [2] * len(ann) and (got.seeds == -1).all() and got.latents.shape == (4, 0)
    assert summary["mode"] == "images" and summary["n"] == 4 and not summary["resized"]
    assert json.loads((tmp_path / "reuse.json").read_text()) == summary

    # its features are the taps of those images, at the task's steps, with class 2
    extract_image_features(backend, got.ids, got.images, tmp_path / "features.h5", classes=got.classes)
    store = FeatureStore.open(tmp_path / "features.h5")
    x = torch.from_numpy(ann.images[1:2]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        want = backend.image_taps(x, torch.tensor([2]))["t20.output_blocks.3"][0].numpy()
    have = store.read(ann.ids[1], ["t20.output_blocks.3"])["t20.output_blocks.3"].astype(np.float32)
    assert np.abs(have - want).max() <= 2e-3 * max(1.0, np.abs(want).max())  # float16 storage

    # images at another resolution are resized with their masks; the report says so
    big = _unconditional_cars(size=32)
    reused, report = reuse_images(big, backend)
    assert reused.images.shape == (4, 16, 16, 3) and reused.masks.shape == (4, 16, 16) and report["resized"].all()


def test_reusing_images_needs_a_diffusion_model(tiny_backend):
    with pytest.raises(ValueError, match="needs a diffusion generator"):
        reuse_images(_unconditional_cars(), tiny_backend)


def test_the_default_runs_ddpm_tasks_reuse_the_gan_tasks_annotations():
    """The shipped toy DDPM is the default config's guided-diffusion checkpoint (sha256 as configured,
    a few MB); its tasks reuse toy-car's and toy-objects' annotations and read the taps ddpm-segmentation does."""
    from labelfactory.config import load_config
    from labelfactory.core.io import sha256_file

    from helpers import REPO

    cfg = load_config(REPO / "config/config.yaml", check_files=False)
    ckpt = cfg["checkpoints"]["toy-ddpm"]
    path = REPO / ckpt["url"]
    assert sha256_file(path) == ckpt["sha256"] and path.stat().st_size < 5e6
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["arch"] == "guided-diffusion" and "scripts/train_toy_ddpm.py" in sidecar["recipe"]["command"]
    car, objects = cfg["tasks"]["toy-car-ddpm"], cfg["tasks"]["toy-objects-ddpm"]
    assert car["reuse"]["task"] == "toy-car" and car["class"] == 0 and car["checkpoint"] == "toy-ddpm"
    assert objects["reuse"]["task"] == "toy-objects" and objects["classes"] == cfg["tasks"]["toy-objects"]["classes"]
    assert car["diffusion"]["feature_steps"] == [50, 150, 250]
    assert "toy-car-ddpm" in cfg["tasks"]["toy-car"]["downstream"]["compare"]
    assert "toy-objects-ddpm" in cfg["tasks"]["toy-objects"]["downstream"]["compare"]
