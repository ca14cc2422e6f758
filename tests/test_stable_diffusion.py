"""Stable Diffusion folders against diffusers' own ``StableDiffusionPipeline``.

The tiny folder is built here from a fixed seed with diffusers' and transformers' classes (a
UNet2DConditionModel, an AutoencoderKL, a CLIPTextModel and a CLIPTokenizer whose character
vocabulary is written here) and saved with ``save_pretrained``, as a user's folder would be.
The backend runs those classes and schedulers, so on one machine samples and features came out
bit-identical (max difference 0.0 on a 2-core EPYC, December 2026); the tolerances allow float32
rounding where batch layout or kernels differ: features ``2e-6 * max|ref|`` (one UNet pass), samples
``5e-5`` absolute in [0, 1] (the pipeline's output scale).
"""

from __future__ import annotations

import json
import shutil
import string
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from labelfactory.cli import main
from labelfactory.generators.loading import convert_checkpoint, load_generator
from labelfactory.generators.view import set_class_prompts, set_diffusion

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FEATURE_TOL, SAMPLE_TOL = 2e-6, 5e-5
PROMPTS = ["a cat", "a dog on grass"]
SEEDS, CLASSES, TRAIN_STEPS = [11, 12], [1, 0], 50


def _tokenizer(tmp_path):
    """A CLIP BPE tokenizer over single characters (and one merge), written as vocab.json + merges.txt."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    vocab["at</w>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na t</w>\n")
    return transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=16)


def _parts(tokenizer):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8)
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, sample_size=16)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    # SD 1.5's scheduler: PNDM over the scaled-linear schedule
    scheduler = diffusers.PNDMScheduler(num_train_timesteps=TRAIN_STEPS, beta_schedule="scaled_linear",
                                        beta_start=0.00085, beta_end=0.012, skip_prk_steps=True, steps_offset=1,
                                        set_alpha_to_one=False)
    return dict(unet=unet.eval(), vae=vae.eval(), text_encoder=text.eval(), tokenizer=tokenizer, scheduler=scheduler)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """(Stable Diffusion folder, its parts as diffusers' pipeline takes them)."""
    tmp = tmp_path_factory.mktemp("sd")
    parts = _parts(_tokenizer(tmp))
    diffusers.StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                      requires_safety_checker=False).save_pretrained(tmp / "sd")
    return tmp / "sd", parts


@pytest.fixture(scope="module")
def backend(folder):
    b = load_generator(folder[0])
    b.set_class_prompts(PROMPTS)
    return b


def _pipeline(parts, path, ddim: bool, steps: int, guidance: float, x_t) -> np.ndarray:
    cls = diffusers.DDIMScheduler if ddim else diffusers.PNDMScheduler
    pipe = diffusers.StableDiffusionPipeline(**{**parts, "scheduler": cls.from_pretrained(path / "scheduler")},
                                             safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe([PROMPTS[c] for c in CLASSES], latents=x_t, num_inference_steps=steps, guidance_scale=guidance,
                output_type="np").images


@pytest.mark.parametrize("sampler,steps,guidance", [("ddim", 10, 7.5), ("ddim", 1, 7.5), ("ddim", 10, 1.0),
                                                    ("ddpm", 10, 7.5)], ids=["ddim10", "one-step", "unguided", "pndm"])
def test_samples_match_the_pipeline(folder, backend, sampler, steps, guidance):
    path, parts = folder
    x_t = torch.from_numpy(backend.draw_latents(SEEDS))
    assert x_t.shape == (2, 4, 8, 8) and torch.equal(x_t[0], torch.randn((4, 8, 8),
                                                                         generator=torch.Generator().manual_seed(11)))
    backend.set_sampling(sampler, steps)
    backend.set_class_prompts(PROMPTS, guidance)
    with torch.no_grad():
        got = backend.sample(x_t, torch.tensor(CLASSES), [torch.Generator() for _ in SEEDS])
    got = (got / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    want = _pipeline(parts, path, sampler == "ddim", steps, guidance, x_t)
    assert got.shape == want.shape == (2, 16, 16, 3)
    assert np.abs(got - want).max() <= SAMPLE_TOL
    backend.set_class_prompts(PROMPTS)


def test_features_per_step_and_block(folder, backend):
    path, parts = folder
    g = torch.Generator().manual_seed(3)
    images, noise = torch.rand((2, 3, 16, 16), generator=g) * 2 - 1, torch.randn((1, 4, 8, 8), generator=g)
    steps, blocks = [30, 1], ["up_blocks.1", "mid_block"]
    y = torch.tensor(CLASSES)
    with torch.no_grad():
        got = backend.image_features(images, noise, y, steps, blocks)
        assert list(got) == ["t30.mid_block", "t30.up_blocks.1", "t1.mid_block", "t1.up_blocks.1"]
        unet, vae, tok = parts["unet"], parts["vae"], parts["tokenizer"]
        ids = tok([PROMPTS[c] for c in CLASSES], padding="max_length", max_length=16, return_tensors="pt").input_ids
        context = parts["text_encoder"](ids)[0]
        latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
        scheduler = diffusers.DDPMScheduler.from_pretrained(path / "scheduler")
        kept = {}
        hooks = [unet.get_submodule(b).register_forward_hook(lambda m, i, o, b=b: kept.__setitem__(b, o))
                 for b in blocks]
        for step in steps:
            t = torch.tensor([step, step])
            unet(scheduler.add_noise(latents, noise.expand(2, -1, -1, -1), t), t, encoder_hidden_states=context)
            for b in blocks:
                want = kept[b].numpy()
                assert got[f"t{step}.{b}"].shape[1:] == backend.block_shapes()[b]
                assert np.abs(got[f"t{step}.{b}"].numpy() - want).max() <= FEATURE_TOL * max(1.0, np.abs(want).max())
        for h in hooks:
            h.remove()


def test_canonical_round_trip(folder, backend, tmp_path):
    path, _ = folder
    from labelfactory.generators.fetch import fetch_checkpoint

    meta = convert_checkpoint(path, tmp_path / "sd.safetensors")
    fetched = fetch_checkpoint(str(path / "model_index.json"), tmp_path / "f.safetensors")  # a config's url
    again = load_generator(tmp_path / "sd.safetensors")
    assert meta["arch"] == "stable-diffusion" and fetched["generator_hash"] == meta["generator_hash"]
    assert again.generator_hash == backend.generator_hash
    set_diffusion(again, {"sampler": "ddim", "sampling_steps": 3, "eta": 0.0, "feature_steps": [5],
                          "feature_noise_seed": 0, "class_prompts": PROMPTS, "guidance_scale": None}, "diffusion")
    backend.set_sampling("ddim", 3)
    backend.set_feature_steps([5])
    z = again.draw_latents(SEEDS)
    for b in (again, backend):
        b.rendered = b.render(z, CLASSES, batch_size=2)
        b.taps = b.render_features(z[:1], CLASSES[:1])
    assert np.array_equal(again.rendered, backend.rendered)
    assert again.taps.keys() == backend.taps.keys() == again.feature_shapes().keys()
    assert all(np.array_equal(again.taps[k], backend.taps[k]) for k in again.taps)
    alone = again.render(z[1:], CLASSES[1:], batch_size=1)
    assert np.abs(again.rendered[1:] - alone).max() <= SAMPLE_TOL


def test_cli(folder, backend, tmp_path):
    path, parts = folder
    np.save(tmp_path / "xt.npy", backend.draw_latents(SEEDS))
    np.save(tmp_path / "y.npy", np.array(CLASSES))
    common = ["--checkpoint", str(path), "--prompts", *PROMPTS, "--classes", str(tmp_path / "y.npy"),
              "--device", "cpu"]
    assert main(["render", *common, "--latents", str(tmp_path / "xt.npy"), "--sampler", "ddim",
                 "--sampling-steps", "10", "--out", str(tmp_path / "img.npy")]) == 0
    got = (np.load(tmp_path / "img.npy") / 2 + 0.5).clip(0, 1).transpose(0, 2, 3, 1)
    want = _pipeline(parts, path, True, 10, 7.5, torch.from_numpy(np.load(tmp_path / "xt.npy")))
    assert np.abs(got - want).max() <= SAMPLE_TOL
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 16, 16), np.float32))
    np.save(tmp_path / "n.npy", np.ones((1, 4, 8, 8), np.float32))
    assert main(["features", *common, "--images", str(tmp_path / "x.npy"), "--image-noise", str(tmp_path / "n.npy"),
                 "--steps", "7", "--blocks", "up_blocks.0", "--out", str(tmp_path / "f.npz")]) == 0
    assert np.load(tmp_path / "f.npz")["t7.up_blocks.0"].shape == (2, 64, 8, 8)


@pytest.mark.parametrize("case", ["no-vae", "block", "step", "no-prompts"])
def test_bad_input_is_one_line_and_writes_nothing(folder, tmp_path, capsys, case):
    path, _ = folder
    bad = tmp_path / "pipe"
    shutil.copytree(path, bad)
    if case == "no-vae":
        shutil.rmtree(bad / "vae")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 16, 16), np.float32))
    np.save(tmp_path / "n.npy", np.zeros((1, 4, 8, 8), np.float32))
    np.save(tmp_path / "y.npy", np.array([0]))
    prompts = [] if case == "no-prompts" else ["--prompts", *PROMPTS]
    out = tmp_path / "f.npz"
    capsys.readouterr()
    assert main(["features", "--checkpoint", str(bad), *prompts, "--images", str(tmp_path / "x.npy"),
                 "--image-noise", str(tmp_path / "n.npy"), "--classes", str(tmp_path / "y.npy"),
                 "--steps", "50" if case == "step" else "5", "--blocks",
                 "up_blocks.7" if case == "block" else "mid_block", "--device", "cpu", "--out", str(out)]) == 1
    (message,) = capsys.readouterr().err.strip().splitlines()
    expected = {"no-vae": "Stable Diffusion layout lacks vae/config.json, vae/diffusion_pytorch_model.safetensors",
                "block": "unknown UNet blocks ['up_blocks.7']", "step": "outside the schedule [0, 50)",
                "no-prompts": "--prompts: a stable-diffusion checkpoint needs class prompts"}[case]
    assert "ERROR" in message and expected in message
    assert not out.exists() and list(tmp_path.glob("f.npz*")) == []


def _sd_config(tmp_path, fmt="stable-diffusion", **diffusion) -> dict:
    ann = tmp_path / "ann"
    ann.mkdir(exist_ok=True)
    (ann / "labels.yaml").write_text("names: [background, thing]\n")
    task = {"checkpoint": "sd", "annotations": str(ann), "classes": [0, 1]}
    if diffusion:
        task["diffusion"] = diffusion
    return {"checkpoints": {"sd": {"url": "sd/model_index.json", "format": fmt}}, "tasks": {"t": task}}


@pytest.mark.parametrize("fmt,diffusion,expected", [
    ("stable-diffusion", {}, "tasks.t.diffusion.class_prompts: a stable-diffusion checkpoint needs one text prompt "
                             "per class"),
    ("stable-diffusion", {"class_prompts": ["a cat"]}, "tasks.t.diffusion.class_prompts: 1 prompts for classes up "
                                                       "to 1 (one prompt per class id, class 0 first)"),
    ("guided-diffusion", {"class_prompts": PROMPTS}, "tasks.t.diffusion.class_prompts: is for Stable Diffusion "
                                                     "checkpoints, not format 'guided-diffusion'"),
    ("diffusers", {"guidance_scale": 3.0}, "tasks.t.diffusion.guidance_scale: is for Stable Diffusion checkpoints"),
], ids=["no-prompts", "too-few", "not-sd", "guidance-not-sd"])
def test_config_refuses_prompts_that_do_not_fit(tmp_path, fmt, diffusion, expected):
    from labelfactory.config import ConfigError, validate_config

    with pytest.raises(ConfigError) as err:
        validate_config(_sd_config(tmp_path, fmt, **diffusion), check_files=False)
    assert str(err.value).splitlines()[1].strip().startswith(expected)


def test_config_with_prompts_reaches_the_backend(tmp_path, folder):
    from labelfactory.config import WorkflowConfig, validate_config
    from labelfactory.generators.view import load_task_generator

    cfg = validate_config(_sd_config(tmp_path, class_prompts=PROMPTS, guidance_scale=2.0), check_files=False)
    task = WorkflowConfig.from_dict(cfg).tasks["t"]
    backend = load_task_generator(folder[0], task=task.name, diffusion=task.diffusion)
    assert backend.prompts == PROMPTS and backend.guidance_scale == 2.0 and backend.num_classes == 2
    with pytest.raises(ValueError, match=r"^tasks.t.diffusion.class_prompts: a stable-diffusion checkpoint needs"):
        load_task_generator(folder[0], task=task.name, diffusion=None)
    with pytest.raises(ValueError, match=r"^--prompts: class prompts and guidance scale are for Stable Diffusion"):
        set_class_prompts(SimpleNamespace(arch="biggan"), PROMPTS, None, "--prompts")


def test_annotated_images_give_the_workflows_feature_file(backend, tmp_path):
    """``extract_features`` of annotated images (annotation.source: images): each image's taps with its
    class's prompt, in the feature file the interpreters read."""
    from labelfactory.features import FeatureStore, extract_image_features

    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    backend.set_feature_steps([1])
    layers = extract_image_features(backend, ["a", "b"], images, tmp_path / "f.h5", classes=np.array(CLASSES))
    store = FeatureStore.open(tmp_path / "f.h5")
    assert layers == store.layers == list(backend.feature_shapes()) and store.shapes == backend.feature_shapes()
    assert store.ids == ["a", "b"] and store.generator_hash == backend.generator_hash
