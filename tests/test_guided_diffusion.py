"""guided-diffusion backend against outputs of the public code (tests/data/guided_diffusion/make_reference.py).

Tolerances are float32 agreement scaled to each array's magnitude: the same
arithmetic in another order (batch of 2 here, 1 there; other conv and matmul
kernels) differs by a few ulp per operation, so:

- features and a single step: ``2e-6 * max|ref|`` — observed up to 9e-7 of the
  magnitude after one UNet pass of ~20 layers (about 8 ulp);
- samples: ``5e-5`` absolute (values in [-1, 1]) — 10 or 100 UNet passes compound
  the per-pass error; observed up to 1e-5.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labelfactory.cli import main
from labelfactory.generators.guided_diffusion import GuidedDiffusionBackend, read_guided_diffusion
from labelfactory.generators.guided_unet import GuidedUNet, normalise_flags
from labelfactory.generators.loading import backend_from_raw, convert_checkpoint, load_generator

DATA = Path(__file__).parent / "data" / "guided_diffusion"
_spec = importlib.util.spec_from_file_location("gd_make_reference", DATA / "make_reference.py")
ref_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref_script)

FEATURE_TOL, SAMPLE_TOL = 2e-6, 5e-5
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _close(got, want, tol):
    want = np.asarray(want)
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(np.asarray(got) - want).max() <= tol * scale


@pytest.fixture(scope="module", params=["uncond", "cond", "xstart"])
def model(request, tmp_path_factory):
    """(name, flags path, checkpoint .pt, reference arrays): the weights rebuilt as make_reference.py drew them."""
    name = request.param
    flags_path = DATA / f"{name}.flags.json"
    flags = json.loads(flags_path.read_text())
    ref = np.load(DATA / f"{name}.reference.npz")
    shapes = {k: tuple(v.shape) for k, v in GuidedUNet(normalise_flags(flags)).state_dict().items()}
    weights = ref_script.reference_weights(shapes, ref_script.WEIGHT_SEED[name])
    assert ref_script.weights_digest(weights) == str(ref["weights_digest"]), "weights not rebuilt as the reference's"
    pt = tmp_path_factory.mktemp(name) / f"{name}.pt"
    torch.save(weights, pt)
    return name, flags_path, pt, ref


def _backend(model) -> GuidedDiffusionBackend:
    _, flags_path, pt, _ = model
    return backend_from_raw(read_guided_diffusion(pt, json.loads(flags_path.read_text())))


def _classes(ref):
    return torch.from_numpy(ref["classes"]) if "classes" in ref.files else None


def test_features_per_step_and_block(model):
    name, _, _, ref = model
    b = _backend(model)
    images, noise = torch.from_numpy(ref["images"]), torch.from_numpy(ref["noise"])
    steps, blocks = ref_script.FEATURE_STEPS[name], ref_script.FEATURE_BLOCKS[name]
    with torch.no_grad():
        got = b.image_features(images, noise, _classes(ref), steps, list(reversed(blocks)))
    # ddpm-segmentation's order: for each step (as given), for each block (in block order)
    assert list(got) == [k[len("feature."):] for k in ref.files if k.startswith("feature.")]
    for key, value in got.items():
        assert tuple(value.shape[1:]) == b.module.output_shapes[int(key.rsplit(".", 1)[1])]
        _close(value, ref[f"feature.{key}"], FEATURE_TOL)
    # the concatenated pixel features, as its collect_features upsamples them (bilinear to the image size)
    def pixels(maps):
        return torch.cat([torch.nn.functional.interpolate(torch.as_tensor(np.asarray(m)), size=(16, 16),
                                                          mode="bilinear") for m in maps], dim=1)
    _close(pixels(got.values()), pixels([ref[f"feature.{k}"] for k in got]), FEATURE_TOL)


def test_one_denoising_step(model):
    _, _, _, ref = model
    b = _backend(model)
    images, noise, y = torch.from_numpy(ref["images"]), torch.from_numpy(ref["noise"]), _classes(ref)
    t = torch.tensor([40, 40])
    step_noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(ref_script.STEP_SEED))
    for sampler, eta, key in (("ddpm", 0.0, "p_sample.t40"), ("ddim", 0.5, "ddim_sample.t40.eta0.5")):
        b.set_sampling(sampler, b.flags["timestep_respacing"] or "100", eta)
        s = b.schedule
        x = s.at(s.sqrt_ac, t) * images + s.at(s.sqrt_1m_ac, t) * noise
        with torch.no_grad():
            _close(b.step(x, t, y, step_noise), ref[key], FEATURE_TOL)


@pytest.mark.parametrize("key,sampler,steps,eta", [("ddim10", "ddim", 10, 0.0), ("ddim10.eta0.5", "ddim", 10, 0.5),
                                                   ("ddpm", "ddpm", None, 0.0)])
def test_samples_from_seeds(model, key, sampler, steps, eta):
    """x_T from the sample's seed (as torch.manual_seed(seed); torch.randn there), then the sampler;
    stochastic steps from the generator the reference seeded."""
    _, _, _, ref = model
    b = _backend(model)
    b.set_sampling(sampler, steps or b.flags["timestep_respacing"] or "100", eta)  # ddpm: through the flags' steps
    x_t = torch.from_numpy(b.draw_latents(ref_script.SAMPLE_SEEDS))
    y = _classes(ref)
    outs = []
    for j, seed in enumerate(ref_script.SAMPLE_SEEDS):
        g = torch.Generator().manual_seed(ref_script.ETA_SEED if eta else seed)
        if not eta:
            torch.randn((1, *b.latent_shape), generator=g)  # x_T came first from this generator
        with torch.no_grad():
            outs.append(b.sample(x_t[j : j + 1], None if y is None else y[j : j + 1], [g]))
    _close(torch.cat(outs), ref[f"sample.{key}"], SAMPLE_TOL)


def test_canonical_round_trip_and_batch_independence(model, tmp_path):
    _, flags_path, pt, _ = model
    b = _backend(model)
    meta = convert_checkpoint(pt, tmp_path / "gd.safetensors", model_flags=json.loads(flags_path.read_text()))
    again = load_generator(tmp_path / "gd.safetensors")
    assert again.generator_hash == b.generator_hash == meta["generator_hash"]
    assert meta["arch_config"] == normalise_flags(json.loads(flags_path.read_text()))
    again.set_sampling("ddpm", "10")
    z = again.draw_latents([3, 4])
    cls = None if again.num_classes == 0 else np.array([5, 6])
    both = again.render(z, cls, batch_size=2)
    alone = again.render(z[1:], None if cls is None else cls[1:], batch_size=1)
    _close(both[1:], alone, SAMPLE_TOL)
    feats = again.render_features(z[:1], None if cls is None else cls[:1])
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == again.feature_shapes()


def test_cli_features_and_render_match_the_reference(model, tmp_path):
    name, flags_path, pt, ref = model
    for key in ("images", "noise") + (("classes",) if "classes" in ref.files else ()):
        np.save(tmp_path / f"{key}.npy", ref[key])
    cls = ["--classes", str(tmp_path / "classes.npy")] if "classes" in ref.files else []
    common = ["--checkpoint", str(pt), "--model-flags", str(flags_path), "--device", "cpu", *cls]
    steps = [str(s) for s in ref_script.FEATURE_STEPS[name]]
    blocks = [str(s) for s in ref_script.FEATURE_BLOCKS[name]]
    assert main(["features", *common, "--images", str(tmp_path / "images.npy"), "--image-noise",
                 str(tmp_path / "noise.npy"), "--steps", *steps, "--blocks", *blocks, "--out",
                 str(tmp_path / "f.npz")]) == 0
    f = np.load(tmp_path / "f.npz")
    assert list(f.files) == [k[len("feature."):] for k in ref.files if k.startswith("feature.")]
    for k in f.files:
        _close(f[k], ref[f"feature.{k}"], FEATURE_TOL)
    seeds = ",".join(map(str, ref_script.SAMPLE_SEEDS))
    assert main(["latents", "--checkpoint", str(pt), "--model-flags", str(flags_path), "--seeds", seeds,
                 "--out", str(tmp_path / "xt.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "xt.npy"), _backend(model).draw_latents(ref_script.SAMPLE_SEEDS))
    assert main(["render", *common, "--latents", str(tmp_path / "xt.npy"), "--sampler", "ddim", "--sampling-steps",
                 "10", "--out", str(tmp_path / "img.npy")]) == 0
    _close(np.load(tmp_path / "img.npy"), ref["sample.ddim10"], SAMPLE_TOL)


@pytest.mark.parametrize("case", ["flags", "step", "block", "no-flags"])
def test_bad_input_is_one_line_and_writes_nothing(model, tmp_path, capsys, case):
    _, flags_path, pt, ref = model
    np.save(tmp_path / "images.npy", ref["images"])
    np.save(tmp_path / "noise.npy", ref["noise"])
    flags = json.loads(flags_path.read_text())
    if case == "flags":
        (tmp_path / "bad.json").write_text(json.dumps({**flags, "num_channels": 64}))
        flags_path = tmp_path / "bad.json"
    step = "100" if case == "step" else "5"
    block = "output_blocks.9" if case == "block" else "0"
    common = ["--checkpoint", str(pt), "--device", "cpu"] + ([] if case == "no-flags" else
                                                              ["--model-flags", str(flags_path)])
    if "classes" in ref.files:
        np.save(tmp_path / "classes.npy", ref["classes"])
        common += ["--classes", str(tmp_path / "classes.npy")]
    out = tmp_path / "f.npz"
    capsys.readouterr()
    assert main(["features", *common, "--images", str(tmp_path / "images.npy"), "--image-noise",
                 str(tmp_path / "noise.npy"), "--steps", step, "--blocks", block, "--out", str(out)]) == 1
    (message,) = capsys.readouterr().err.strip().splitlines()
    assert "ERROR" in message
    steps = 50 if flags["timestep_respacing"] else 100
    expected = {"flags": "time_embed.0.weight", "step": f"outside the schedule [0, {steps})",
                "block": "unknown UNet blocks ['output_blocks.9']", "no-flags": "give its model flags"}[case]
    assert expected in message
    assert not out.exists() and list(tmp_path.glob("f.npz*")) == []


def test_flag_checks():
    with pytest.raises(ValueError, match="unknown guided-diffusion flags"):
        normalise_flags({"num_channel": 32})
    with pytest.raises(ValueError, match="no default channel_mult for image_size 16"):
        normalise_flags({"image_size": 16})
    flags = normalise_flags({"attention_resolutions": [32, 16, 8], "learn_sigma": "True", "image_size": 256})
    assert flags["attention_resolutions"] == "32,16,8" and flags["learn_sigma"] is True


def test_respacing_as_guided_diffusion():
    from labelfactory.generators.guided_diffusion import space_timesteps

    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(100, "10") == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    assert space_timesteps(300, "10,15,20")[:3] == [0, 11, 22] and len(space_timesteps(300, "10,15,20")) == 45
    with pytest.raises(ValueError, match="cannot take 20 steps from a section of 10"):
        space_timesteps(10, "20")


def test_config_model_flags_reach_the_converted_checkpoint(model, tmp_path):
    """checkpoints.<name>.model_flags: validated, typed, and what fetch_checkpoint converts the .pt with."""
    from labelfactory.config import WorkflowConfig, validate_config
    from labelfactory.generators.fetch import fetch_checkpoint

    _, flags_path, pt, _ = model
    flags = json.loads(flags_path.read_text())
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "labels.yaml").write_text("names: [background, thing]\n")
    cfg = {"checkpoints": {"g": {"url": str(pt), "format": "guided-diffusion", "model_flags": flags}},
           "tasks": {"t": {"checkpoint": "g", "annotations": str(ann)}}}
    spec = WorkflowConfig.from_dict(validate_config(cfg)).checkpoints["g"]
    meta = fetch_checkpoint(spec.url, tmp_path / "g.safetensors", fmt=spec.format, model_flags=spec.model_flags)
    assert meta["arch"] == "guided-diffusion" and meta["arch_config"] == normalise_flags(flags)
    assert load_generator(tmp_path / "g.safetensors").generator_hash == _backend(model).generator_hash
    assert main(["convert", str(pt), str(tmp_path / "c.safetensors"), "--model-flags", str(flags_path)]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["generator_hash"] == meta["generator_hash"]


def test_task_diffusion_settings(model, tmp_path):
    """tasks.<name>.diffusion: validated, typed and applied by load_task_generator; refused for a GAN."""
    from labelfactory.config import WorkflowConfig, validate_config
    from labelfactory.generators.view import load_task_generator

    _, flags_path, pt, _ = model
    convert_checkpoint(pt, tmp_path / "g.safetensors", model_flags=json.loads(flags_path.read_text()))
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "labels.yaml").write_text("names: [background, thing]\n")
    cfg = {"checkpoints": {"g": {"url": str(pt)}},
           "tasks": {"t": {"checkpoint": "g", "annotations": str(ann),
                           "diffusion": {"sampling_steps": 10, "feature_steps": [5, 25]}}}}
    task = WorkflowConfig.from_dict(validate_config(cfg)).tasks["t"]
    assert task.diffusion == {"sampler": "ddim", "sampling_steps": 10, "eta": 0.0, "feature_steps": [5, 25],
                              "feature_noise_seed": 0}
    b = load_task_generator(tmp_path / "g.safetensors", diffusion=task.diffusion, task="t")
    assert (b.sampler, b.schedule.num_steps, b.feature_steps) == ("ddim", 10, [5, 25])
    assert next(iter(b.feature_shapes())) == "t5.output_blocks.0"
    with pytest.raises(ValueError, match=r"tasks.t.diffusion: diffusion steps \[100\] are outside"):
        load_task_generator(tmp_path / "g.safetensors", diffusion={**task.diffusion, "feature_steps": [100]}, task="t")


def test_task_diffusion_settings_refused_for_a_gan(tiny_backend):
    from labelfactory.generators.view import set_diffusion

    with pytest.raises(ValueError, match="tasks.x.diffusion is for diffusion generators; this stylegan2"):
        set_diffusion(tiny_backend, {"sampler": "ddim"}, "tasks.x.diffusion")


def test_paper_flags_give_ddpm_segmentations_feature_width():
    """ddpm-segmentation's 256 px models (its MODEL_FLAGS) with its blocks 5, 6, 7, 8, 12 at 3 steps:
    the 8448 channels of its experiments' ``dim``, at 32 to 128 px (the last block at 256)."""
    flags = {"attention_resolutions": "32,16,8", "class_cond": False, "diffusion_steps": 1000, "dropout": 0.1,
             "image_size": 256, "learn_sigma": True, "noise_schedule": "linear", "num_channels": 256,
             "num_head_channels": 64, "num_res_blocks": 2, "resblock_updown": True, "use_fp16": True,
             "use_scale_shift_norm": True}
    with torch.device("meta"):
        unet = GuidedUNet(flags)
    shapes = unet.output_shapes
    assert 3 * sum(shapes[b][0] for b in (5, 6, 7, 8, 12)) == 8448
    assert [shapes[b][1] for b in (5, 6, 7, 8, 12)] == [32, 32, 32, 64, 128] and shapes[-1] == (256, 256, 256)


def test_feature_store_of_a_diffusion_task(model, tmp_path):
    """The workflow's extract_features on a diffusion backend: samples from seeds, taps chosen by name."""
    from labelfactory.features import FeatureStore, extract_features

    b = _backend(model)
    b.set_sampling("ddim", "3")
    b.set_feature_steps([5, 25])
    z = b.draw_latents([0, 1])
    cls = None if b.num_classes == 0 else np.array([7, 8])
    layers = ["t25.output_blocks.1", "t5.output_blocks.3"]
    assert extract_features(b, ["s0", "s1"], z, tmp_path / "f.h5", cls, layers=layers) == [
        "t5.output_blocks.3", "t25.output_blocks.1"]
    store = FeatureStore.open(tmp_path / "f.h5")
    assert store.shapes == {name: b.feature_shapes()[name] for name in store.layers}
    images = torch.from_numpy(b.render(z, cls))
    noise = torch.randn((1, *b.latent_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = b.image_features(images.clamp(-1, 1), noise, None if cls is None else torch.from_numpy(cls), [5], [3])
    _close(store.read("s1")["t5.output_blocks.3"].astype(np.float32), want["t5.output_blocks.3"][1].numpy(), 1e-3)


def test_cli_refuses_gan_options(model, tmp_path, capsys):
    _, flags_path, pt, ref = model
    np.save(tmp_path / "x.npy", ref["images"])
    capsys.readouterr()
    assert main(["features", "--checkpoint", str(pt), "--model-flags", str(flags_path), "--latents",
                 str(tmp_path / "x.npy"), "--layers", "a", "--out", str(tmp_path / "f.npz")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("--latents, --layers: not for diffusion models") and not (tmp_path / "f.npz").exists()
