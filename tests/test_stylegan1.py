"""StyleGAN1 in DatasetGAN's release layout: the ``datasetgan-stylegan1`` reader and the
backend against outputs recorded from the release's own ``models/stylegan1.py`` (see
``data/make_stylegan1_reference.py``), truncation with the release's average-latent
file, noise modes, strict keys, the paper widths, and the ``render`` / ``features`` commands."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from labelfactory.cli import main
from labelfactory.generators.checkpoints import CheckpointError
from labelfactory.generators.loading import convert_checkpoint, load_generator, read_checkpoint
from labelfactory.generators.stylegan1 import StyleGAN1Backend, StyleGAN1Config, StyleGAN1Generator, release_channels
from labelfactory.generators.view import load_task_generator

from formats import rosinality_generator, save_rosinality
from helpers import assert_float32_close

DATA = Path(__file__).parent / "data"
REF = load_file(str(DATA / "stylegan1_reference.safetensors"))
# What the recipe built: G_synthesis(fmap_base=64, fmap_max) has nf(stage) = min(64 / 2**stage, fmap_max) channels.
CONFIGS = {
    "s32": dict(resolution=32, channels={"4": 16, "8": 16, "16": 8, "32": 4}, z_dim=16, w_dim=16,
                mapping_layers=8, truncation_cutoff=7),
    "s128": dict(resolution=128, channels={"4": 8, "8": 8, "16": 8, "32": 4, "64": 2, "128": 1}, z_dim=16,
                 w_dim=16, mapping_layers=8, truncation_cutoff=7),
}
TAPS_32 = [("4x4.epi2", (16, 4, 4)), ("4x4.conv", (16, 4, 4)), ("8x8.epi2", (16, 8, 8)), ("8x8.conv1", (16, 8, 8)),
           ("16x16.epi2", (8, 16, 16)), ("16x16.conv1", (8, 16, 16)), ("32x32.epi2", (4, 32, 32)),
           ("32x32.conv1", (4, 32, 32))]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pt(name: str) -> Path:
    return DATA / f"stylegan1_{name}.for_g_all.pt"


def _avg(name: str) -> np.ndarray:
    return np.load(DATA / f"stylegan1_{name}_avg_latent.npy")


def _close(got, want):
    """Equal to the release's float32 output up to summation-order noise: the references were
    made on one CPU, and another CPU's kernels add in another order (seen: 2.4e-5 absolute,
    9e-6 relative on an Intel Xeon; 1.1e-5 on an AMD EPYC): relative 1e-4 of each value and of the
    reference's largest magnitude (helpers.assert_float32_close). A wrong weight or op is off by far more."""
    assert_float32_close(got, want)


def _synth(b, name, **kw):
    with torch.no_grad():
        return b.synthesize(REF[f"{name}/z"], noise="none", **kw)


# --- the reader and the forward, against the release -------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_g_all_is_detected_by_its_keys_whatever_the_suffix(tmp_path, name):
    assert _pt(name).read_bytes()[:2] == b"\x80\x02"  # the legacy (non-zip) torch pickle, as the release's
    for fname in ["weights.pth", "model.bin", "noext"]:
        shutil.copy(_pt(name), tmp_path / fname)
        raw = read_checkpoint(tmp_path / fname)
        assert (raw.arch, raw.converted_from, raw.arch_config) == ("stylegan1", "datasetgan-stylegan1", CONFIGS[name])
    zipped = tmp_path / "zipped.pt"
    torch.save(torch.load(_pt(name), weights_only=True), zipped)
    assert read_checkpoint(zipped).converted_from == "datasetgan-stylegan1"


def test_images_and_features_match_the_release():
    b = load_generator(_pt("s32"))
    out = _synth(b, "s32")
    _close(out.images, REF["s32/plain/images"])
    assert list(b.feature_shapes().items()) == TAPS_32
    assert [(k, tuple(v.shape[1:])) for k, v in out.features.items()] == TAPS_32  # the release's result_list order
    for i, v in enumerate(out.features.values()):
        _close(v, REF[f"s32/plain/features/{i:02d}"])
    assert _synth(b, "s32", features=False).features == {}


def test_recorded_noise_matches_the_release():
    g = load_generator(_pt("s32")).module
    noise = [REF[f"s32/noise/noise/{i:02d}"] for i in range(8)]
    with torch.no_grad():
        img, _ = g.synthesis(g.mapping(REF["s32/z"]), noise)
    _close(img, REF["s32/noise/images"])
    assert (img - REF["s32/plain/images"]).abs().max() > 0.1  # the noise strengths act


@pytest.mark.parametrize("name, cutoff", [("s32", None), ("s128", 8)])
def test_truncation_matches_the_release(name, cutoff):
    """s32: the default cut-off below 512 px (7, the release's cat/bedroom); s128: 8 (car/face), set in
    the config; its 128 px block also takes the release's fused upsampling conv."""
    raw = read_checkpoint(_pt(name))
    cfg = raw.arch_config if cutoff is None else {**raw.arch_config, "truncation_cutoff": cutoff}
    b = StyleGAN1Backend.from_tensors(cfg, raw.tensors).set_average_latent(_avg(name))
    _close(_synth(b, name, truncation=0.7).images, REF[f"{name}/trunc/images"])
    other = StyleGAN1Backend.from_tensors({**cfg, "truncation_cutoff": cfg["truncation_cutoff"] - 1}, raw.tensors)
    other.set_average_latent(_avg(name))
    assert (_synth(other, name, truncation=0.7).images - REF[f"{name}/trunc/images"]).abs().max() > 1e-2


def test_truncation_cutoff_is_a_setting():
    """The cut-off derived from the resolution (7 below 512 px) unless set: 8 changes a truncated image,
    7 gives the default's exactly, None restores it; psi 1 and the generator hash do not depend on it."""
    b = load_generator(_pt("s32")).set_average_latent(_avg("s32"))
    h = b.generator_hash
    assert b.truncation_cutoff == b.module.cfg.truncation_cutoff == 7
    default = _synth(b, "s32", truncation=0.7).images
    _close(default, REF["s32/trunc/images"])
    eight = _synth(b.set_truncation_cutoff(8), "s32", truncation=0.7).images
    assert b.truncation_cutoff == 8 and (eight - default).abs().max() > 1e-2
    _close(_synth(b, "s32").images, REF["s32/plain/images"])  # psi 1: no layer is truncated
    assert b.generator_hash == h  # a rendering input, as the average latent
    torch.testing.assert_close(_synth(b.set_truncation_cutoff(7), "s32", truncation=0.7).images, default,
                               rtol=0, atol=0)
    torch.testing.assert_close(_synth(b.set_truncation_cutoff(None), "s32", truncation=0.7).images, default,
                               rtol=0, atol=0)
    assert b.truncation_cutoff == 7


def test_truncation_cutoff_reproduces_the_release_at_its_cutoff():
    """s128 was recorded with the release's Truncation(max_layer=8); its file derives 7 (128 px)."""
    b = load_generator(_pt("s128")).set_average_latent(_avg("s128"))
    assert b.truncation_cutoff == 7
    assert (_synth(b, "s128", truncation=0.7).images - REF["s128/trunc/images"]).abs().max() > 1e-2
    _close(_synth(b.set_truncation_cutoff(8), "s128", truncation=0.7).images, REF["s128/trunc/images"])


@pytest.mark.parametrize("bad", [0, 9, 2.5, True, "8"])
def test_bad_truncation_cutoffs_are_refused(bad):
    b = load_generator(_pt("s32"))
    with pytest.raises(ValueError, match=r"truncation cut-off must be a layer count from 1 to 8 .*got"):
        b.set_truncation_cutoff(bad)
    assert b.truncation_cutoff == 7


def test_task_generator_takes_the_cutoff(tmp_path):
    np.save(tmp_path / "avg.npy", _avg("s32"))
    b = load_task_generator(_pt("s32"), truncation=0.7, average_latent=tmp_path / "avg.npy", truncation_cutoff=8,
                            task="car")
    assert b.truncation_cutoff == 8
    assert load_task_generator(_pt("s32"), truncation=0.7, average_latent=tmp_path / "avg.npy").truncation_cutoff == 7
    with pytest.raises(ValueError, match=r"^tasks\.car\.truncation_cutoff: truncation cut-off must be .* got 20$"):
        load_task_generator(_pt("s32"), truncation_cutoff=20, task="car")
    pt = save_rosinality(tmp_path / "r.pt", rosinality_generator(size=8, style_dim=8, channels={4: 8, 8: 6}),
                         "converted")
    with pytest.raises(ValueError, match=r"^tasks\.car\.truncation_cutoff is for StyleGAN1 .* this stylegan2"):
        load_task_generator(pt, truncation_cutoff=8, task="car")


def test_average_latent_layouts_and_hash():
    b = load_generator(_pt("s32"))
    h = b.generator_hash
    avg = _avg("s32")
    assert avg.shape == (18, 16) and np.allclose(avg, avg[:1])  # the release's file: one mean w, 18 rows
    want = _synth(b.set_average_latent(avg), "s32", truncation=0.7).images
    for same in (avg[0], avg[None], avg[:1], avg[:8]):
        _close(_synth(b.set_average_latent(same), "s32", truncation=0.7).images, want)
    assert b.generator_hash == h  # the truncation centre is a rendering input, not part of the generator
    for bad in (avg[:, :8], avg[:4], np.zeros((2, 18, 16))):
        with pytest.raises(ValueError, match=r"average latent must be \[18, 16\]"):
            b.set_average_latent(bad)


def test_missing_average_latent_is_a_one_line_error():
    b = load_generator(_pt("s32"))
    z = REF["s32/z"].numpy()
    with pytest.raises(ValueError, match="avg_latent_stylegan1.npy.*--average-latent") as err:
        b.render(z, truncation=0.7, noise="none")
    assert "\n" not in str(err.value)
    _close(b.render(z, truncation=1.0, noise="none"), REF["s32/plain/images"])  # psi 1 needs none


def test_noise_modes():
    b = load_generator(_pt("s32"))
    z = REF["s32/z"].numpy()
    with pytest.raises(ValueError, match="store no noise.*'none'.*'random'"):
        b.render(z)  # the default 'const': there is none stored
    r1, r2 = (b.render(z, noise="random", noise_seed=s) for s in (3, 3))
    np.testing.assert_array_equal(r1, r2)
    assert np.abs(b.render(z, noise="random", noise_seed=4) - r1).max() > 0.1
    assert np.abs(b.render(z, noise="none") - r1).max() > 0.1
    np.testing.assert_array_equal(b.render(z, noise="none"), b.render(z, noise="none"))
    with pytest.raises(ValueError, match="unconditional"):
        b.render(z, classes=[0, 1], noise="none")


# --- strict loading ---------------------------------------------------------------------------
@pytest.mark.parametrize("edit, key", [
    ("drop", "g_synthesis.blocks.8x8.epi1.top_epi.noise.weight"),
    ("drop", "g_synthesis.blocks.16x16.conv0_up.intermediate.kernel"),
    ("drop", "g_mapping.dense3.bias"),
    ("add", "truncation.avg_latent"),
    ("add", "g_synthesis.blocks.32x32.epi2.instance_norm.running_mean"),
])
def test_key_mismatches_are_named(tmp_path, edit, key):
    sd = torch.load(_pt("s32"), weights_only=True)
    if edit == "add":
        sd[key] = torch.zeros(16)
    else:
        del sd[key]
    torch.save(sd, tmp_path / "g.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_generator(tmp_path / "g.pt")


def test_shape_mismatch_is_named(tmp_path):
    sd = torch.load(_pt("s32"), weights_only=True)
    sd["g_synthesis.blocks.8x8.epi2.style_mod.lin.weight"] = torch.zeros(30, 16)
    torch.save(sd, tmp_path / "g.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"8x8\.epi2\.style_mod\.lin\.weight"):
        load_generator(tmp_path / "g.pt")


def test_other_torch_files_keep_their_readers(tmp_path):
    pt = save_rosinality(tmp_path / "r.pt", rosinality_generator(size=8, style_dim=8, channels={4: 8, 8: 6}),
                         "converted")
    assert read_checkpoint(pt).converted_from == "rosinality"
    assert read_checkpoint(DATA / "biggan32_flat.pth").converted_from == "biggan-pytorch"
    torch.save({"something": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="neither 'g_ema'"):  # unknown dicts still get rosinality's error
        read_checkpoint(tmp_path / "x.pt")


def test_convert_round_trip(tmp_path):
    meta = convert_checkpoint(_pt("s32"), tmp_path / "g.safetensors")
    back = load_generator(tmp_path / "g.safetensors")
    assert meta["converted_from"] == "datasetgan-stylegan1"
    assert back.generator_hash == meta["generator_hash"] == load_generator(_pt("s32")).generator_hash
    _close(_synth(back, "s32").images, REF["s32/plain/images"])


# --- the release's configurations -------------------------------------------------------------
@pytest.mark.parametrize("resolution, width, cutoff", [(256, 4992, 7), (512, 5056, 8), (1024, 5088, 8)])
def test_paper_feature_widths_and_cutoffs(resolution, width, cutoff):
    """The release's experiment configs: ``dim`` [.., .., 4992] (cat, bedroom), 5056 (car), 5088 (face);
    ``max_layer`` 7 and 8 in ``prepare_stylegan``."""
    cfg = StyleGAN1Config(resolution, release_channels(resolution))
    with torch.device("meta"):
        shapes = StyleGAN1Generator(cfg).feature_shapes()
    assert sum(c for c, _, _ in shapes.values()) == width
    assert (cfg.truncation_cutoff, cfg.num_layers, len(shapes)) == (cutoff, 2 * len(cfg.resolutions), cfg.num_layers)
    assert list(shapes)[-2:] == [f"{resolution}x{resolution}.epi2", f"{resolution}x{resolution}.conv1"]
    assert release_channels(resolution)[4] == 512 and release_channels(resolution)[resolution] == 16384 // resolution


# --- command line -----------------------------------------------------------------------------
def _cli(tmp_path, command, *extra):
    np.save(tmp_path / "z.npy", REF["s32/z"].numpy())
    np.save(tmp_path / "avg.npy", _avg("s32"))
    return main([command, "--checkpoint", str(_pt("s32")), "--latents", str(tmp_path / "z.npy"), "--device", "cpu",
                 "--noise", "none", *extra])


def test_cli_render_with_average_latent(tmp_path):
    assert _cli(tmp_path, "render", "--truncation", "0.7", "--average-latent", str(tmp_path / "avg.npy"),
                "--out", str(tmp_path / "img.npy")) == 0
    _close(np.load(tmp_path / "img.npy"), REF["s32/trunc/images"])


def test_cli_missing_average_latent(tmp_path, capsys):
    capsys.readouterr()
    assert _cli(tmp_path, "render", "--truncation", "0.7", "--out", str(tmp_path / "img.npy")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ERROR" in err[0] and "--average-latent" in err[0]
    assert not (tmp_path / "img.npy").exists()
    pt = save_rosinality(tmp_path / "r.pt", rosinality_generator(size=8, style_dim=8, channels={4: 8, 8: 6}),
                         "converted")
    np.save(tmp_path / "z8.npy", np.zeros((1, 8), np.float32))
    assert main(["render", "--checkpoint", str(pt), "--latents", str(tmp_path / "z8.npy"), "--average-latent",
                 str(tmp_path / "avg.npy"), "--out", str(tmp_path / "r.npy")]) == 1  # StyleGAN2 has its own


def test_cli_truncation_cutoff(tmp_path, capsys):
    """render and features take --truncation-cutoff: 8 reproduces s128's release recording (its file
    derives 7), and on s32 it changes the truncated features; a StyleGAN2 file refuses it in one line."""
    np.save(tmp_path / "z128.npy", REF["s128/z"].numpy())
    np.save(tmp_path / "avg128.npy", _avg("s128"))
    common = ["--checkpoint", str(_pt("s128")), "--latents", str(tmp_path / "z128.npy"), "--device", "cpu",
              "--noise", "none", "--truncation", "0.7", "--average-latent", str(tmp_path / "avg128.npy")]
    assert main(["render", *common, "--truncation-cutoff", "8", "--out", str(tmp_path / "img.npy")]) == 0
    _close(np.load(tmp_path / "img.npy"), REF["s128/trunc/images"])
    trunc = ["--truncation", "0.7", "--average-latent", str(tmp_path / "avg.npy")]
    assert _cli(tmp_path, "features", *trunc, "--out", str(tmp_path / "f7.npz")) == 0
    assert _cli(tmp_path, "features", *trunc, "--truncation-cutoff", "8", "--out", str(tmp_path / "f8.npz")) == 0
    with np.load(tmp_path / "f7.npz") as f7, np.load(tmp_path / "f8.npz") as f8:
        assert f7.files == f8.files and np.abs(f7["32x32.epi2"] - f8["32x32.epi2"]).max() > 1e-3
    pt = save_rosinality(tmp_path / "r.pt", rosinality_generator(size=8, style_dim=8, channels={4: 8, 8: 6}),
                         "converted")
    np.save(tmp_path / "z8.npy", np.zeros((1, 8), np.float32))
    capsys.readouterr()
    assert main(["render", "--checkpoint", str(pt), "--latents", str(tmp_path / "z8.npy"), "--truncation-cutoff", "8",
                 "--out", str(tmp_path / "r.npy")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--truncation-cutoff is for StyleGAN1" in err[0]


def test_cli_features(tmp_path):
    assert _cli(tmp_path, "features", "--out", str(tmp_path / "f.npz")) == 0
    with np.load(tmp_path / "f.npz") as f:
        assert [(k, f[k].shape) for k in f.files] == [(k, (2, *s)) for k, s in TAPS_32]
        for i, k in enumerate(f.files):
            _close(f[k], REF[f"s32/plain/features/{i:02d}"])
    assert _cli(tmp_path, "features", "--layers", "16x16.conv1,4x4.epi2", "--out", str(tmp_path / "two.npz")) == 0
    with np.load(tmp_path / "two.npz") as f:
        assert f.files == ["4x4.epi2", "16x16.conv1"]
