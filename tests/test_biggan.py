"""BigGAN (BigGAN-PyTorch layout): the backend and the ``biggan-pytorch`` reader
against outputs recorded from ajbrock/BigGAN-PyTorch itself (see
``data/make_biggan_reference.py``), strict key checks, the truncated normal, and
the ``render`` / ``features`` commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from labelfactory.cli import main
from labelfactory.generators.biggan import BigGANBackend, BigGANGenerator, truncated_normal
from labelfactory.generators.checkpoints import CheckpointError
from labelfactory.generators.loading import convert_checkpoint, load_generator, read_checkpoint, write_canonical
from labelfactory.generators.stylegan2 import StyleGAN2Backend

from formats import rosinality_generator, save_rosinality
from helpers import assert_float32_close

DATA = Path(__file__).parent / "data"
REF = load_file(str(DATA / "biggan_reference.safetensors"))

# What the recipe built (BigGAN-PyTorch's arguments), as our config must read it from the shapes.
# 64 px: dim_z 16 over 5 slots is rounded down to 15 by the reference.
CONFIGS = {
    "biggan32_hier": dict(resolution=32, ch=4, dim_z=20, shared_dim=8, n_classes=5, attention=[16], hier=True),
    "biggan64_hier": dict(resolution=64, ch=1, dim_z=15, shared_dim=6, n_classes=4, attention=[16], hier=True),
    "biggan32_flat": dict(resolution=32, ch=4, dim_z=12, shared_dim=8, n_classes=3, attention=[8], hier=False),
}
LAYERS_64 = [("block0", (16, 8, 8)), ("block1", (8, 16, 16)), ("block1.attention", (8, 16, 16)),
             ("block2", (4, 32, 32)), ("block3", (2, 64, 64))]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pth(name: str) -> Path:
    return DATA / f"{name}.pth"


def _state(name: str) -> dict[str, torch.Tensor]:
    return torch.load(_pth(name), weights_only=True)


def _stylegan2() -> StyleGAN2Backend:
    g = rosinality_generator(size=8, style_dim=8, channels={4: 8, 8: 6})
    return StyleGAN2Backend(g, g.cfg.to_dict())


def _render(backend, name: str):
    with torch.no_grad():
        return backend.synthesize(REF[f"{name}/z"], REF[f"{name}/classes"])


# --- the reader and the forward, against BigGAN-PyTorch -------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_pth_is_detected_and_config_inferred(name):
    raw = read_checkpoint(_pth(name))
    assert (raw.arch, raw.converted_from) == ("biggan", "biggan-pytorch")
    want = {**CONFIGS[name], "bottom_width": 4, "bn_eps": 1e-4, "sn_eps": 1e-4, "num_sv_itrs": 1}
    assert {k: raw.arch_config[k] for k in want} == want
    assert raw.notes == {}  # BigGAN-PyTorch's own state dict has every key


@pytest.mark.parametrize("name", list(CONFIGS))
def test_images_and_features_match_biggan_pytorch(name):
    b = load_generator(_pth(name))
    out = _render(b, name)
    assert_float32_close(out.images, REF[f"{name}/images"])
    assert list(out.features) == list(b.feature_shapes())  # every tap, forward order
    recorded = [k.split("/features/")[1] for k in REF if k.startswith(f"{name}/features/")]
    for layer in recorded:
        assert_float32_close(out.features[layer], REF[f"{name}/features/{layer}"])
    assert len(recorded) == (len(out.features) if CONFIGS[name]["hier"] else 0)


def test_feature_taps_names_and_shapes_in_forward_order():
    b = load_generator(_pth("biggan64_hier"))
    assert list(b.feature_shapes().items()) == LAYERS_64
    out = _render(b, "biggan64_hier")
    assert [(k, tuple(v.shape[1:])) for k, v in out.features.items()] == LAYERS_64
    assert (b.z_dim, b.resolution, b.num_classes, b.class_names) == (15, 64, 4, None)
    no_feats = b.synthesize(REF["biggan64_hier/z"], REF["biggan64_hier/classes"], features=False)
    assert no_feats.features == {}


def test_eval_spectral_norm_uses_stored_u0_and_keeps_it():
    sd = _state("biggan32_hier")
    b = load_generator(_pth("biggan32_hier"))
    _render(b, "biggan32_hier")
    after = b.module.state_dict()
    for k in sd:  # u0, sv0 and the BN statistics are untouched by an eval forward
        torch.testing.assert_close(after[k], sd[k], rtol=0, atol=0)
    # and u0 is what normalises: another u0 gives another image
    sd["blocks.0.0.conv1.u0"] = torch.randn_like(sd["blocks.0.0.conv1.u0"])
    g = BigGANGenerator(b.module.cfg).eval()
    g.load_state_dict(sd)
    with torch.no_grad():
        other = g.generate(REF["biggan32_hier/z"], REF["biggan32_hier/classes"])
    assert (other - REF["biggan32_hier/images"]).abs().max() > 1e-3


def test_class_embedding_is_the_shared_table():
    b = load_generator(_pth("biggan32_hier"))
    torch.testing.assert_close(b.class_embedding(), _state("biggan32_hier")["shared.weight"], rtol=0, atol=0)
    assert _stylegan2().class_embedding() is None


# --- strict loading ------------------------------------------------------------------------
def test_converter_output_without_sv0_loads(tmp_path):
    """TFHub/converter.py's state dict has no ``sv0`` (it loads with strict=False for that)."""
    sd = _state("biggan32_hier")
    dropped = sorted(k for k in sd if k.endswith(".sv0"))
    assert len(dropped) == 3 * (3 + 2 * 2) + 4 + 2  # per block 3 convs + ccbn gain/bias ×2; attention; linear, output
    path = tmp_path / "converted.pth"
    torch.save({k: v for k, v in sd.items() if k not in dropped}, path)
    raw = read_checkpoint(path)
    assert raw.notes["filled_with_ones"] == dropped
    b = load_generator(path)
    assert_float32_close(_render(b, "biggan32_hier").images, REF["biggan32_hier/images"])
    assert all(float(b.module.state_dict()[k]) == 1.0 for k in dropped)


@pytest.mark.parametrize("edit, key", [
    ("add", "blocks.0.0.conv1.u1"),  # a second singular vector (num_G_SVs=2): not this architecture
    ("add", "output_layer.0.num_batches_tracked"),
    ("drop", "blocks.1.0.bn2.gain.u0"),  # u0 is in every converted file: its absence is an error
    ("drop", "blocks.1.1.gamma"),
    ("drop", "output_layer.2.bias"),
])
def test_other_key_mismatches_are_named(tmp_path, edit, key):
    sd = _state("biggan32_hier")
    if edit == "add":
        sd[key] = torch.zeros(1, 16)
    else:
        del sd[key]
    path = tmp_path / "g.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")) as err:
        load_generator(path)
    assert "g.pth" in str(err.value)


def test_shape_mismatch_is_a_checkpoint_error(tmp_path):
    sd = _state("biggan32_hier")
    sd["blocks.2.0.conv2.weight"] = torch.zeros(16, 16, 1, 1)
    torch.save(sd, tmp_path / "g.pth")
    with pytest.raises(CheckpointError, match="conv2.weight"):
        load_generator(tmp_path / "g.pth")


def test_sniffing_tells_biggan_from_rosinality(tmp_path):
    pt = save_rosinality(tmp_path / "r.pt", rosinality_generator(size=8, style_dim=8, channels={4: 8, 8: 6}),
                         "converted")
    assert read_checkpoint(pt).converted_from == "rosinality"
    assert read_checkpoint(_pth("biggan32_flat")).converted_from == "biggan-pytorch"
    with pytest.raises(CheckpointError, match="not a BigGAN-PyTorch"):
        read_checkpoint(pt, fmt="biggan-pytorch")


def test_convert_round_trip_keeps_hash_images_and_class_names(tmp_path):
    meta = convert_checkpoint(_pth("biggan32_hier"), tmp_path / "g.safetensors")
    back = load_generator(tmp_path / "g.safetensors")
    assert back.generator_hash == meta["generator_hash"] == load_generator(_pth("biggan32_hier")).generator_hash
    assert_float32_close(_render(back, "biggan32_hier").images, REF["biggan32_hier/images"])

    names = ["car", "face", "house", "tree", "cat"]
    named = BigGANBackend(back.module, back.module.cfg.to_dict(), class_names=names)
    write_canonical(tmp_path / "named.safetensors", named, {"converted_from": "test"})
    again = load_generator(tmp_path / "named.safetensors")
    assert again.class_names == names and again.generator_hash == named.generator_hash
    with pytest.raises(ValueError, match="3 class names for 5"):
        BigGANBackend(back.module, back.module.cfg.to_dict(), class_names=names[:3])


def test_classes_are_required_and_checked():
    b = load_generator(_pth("biggan32_flat"))
    z = REF["biggan32_flat/z"].numpy()
    with pytest.raises(ValueError, match="class-conditional"):
        b.render(z)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        b.render(z, [0, 3])


# --- latents ------------------------------------------------------------------------------
def test_truncated_normal_matches_recorded_scipy_values():
    seeds = REF["truncnorm/seeds"].tolist()
    got = truncated_normal(seeds, 20, 0.6)
    assert got.dtype == np.float32
    # float64 inverse CDF rounded to float32 (|z| <= 1.2, ulp 1.2e-7): libm's last bits differ across CPUs
    # by an ulp or so of float64, so results agree to the float32 rounding; 1e-6 is 8 float32 ulps at 1.2
    np.testing.assert_allclose(got, REF["truncnorm/values"].numpy(), rtol=0, atol=1e-6)
    assert np.abs(got).max() <= 2 * 0.6


def test_truncated_normal_matches_scipy():
    truncnorm = pytest.importorskip("scipy.stats").truncnorm
    for seed, psi, dim in [(0, 1.0, 128), (42, 0.4, 7), (2**31 - 1, 0.9, 33)]:
        want = truncnorm.rvs(-2, 2, size=(1, dim), random_state=np.random.RandomState(seed)) * psi
        # float32 (|z| <= 2, ulp 2.4e-7) against scipy's float64: 1e-6 is 4 float32 ulps at 2
        np.testing.assert_allclose(truncated_normal([seed], dim, psi), want, rtol=0, atol=1e-6)


def test_sample_latents_truncation():
    b = load_generator(_pth("biggan32_hier"))
    np.testing.assert_array_equal(b.draw_latents([3, 4], truncation=0.5), truncated_normal([3, 4], 20, 0.5))
    np.testing.assert_array_equal(_stylegan2().draw_latents([5], truncation=0.5),
                                  np.random.RandomState(5).randn(1, 8).astype(np.float32))


# --- command line ---------------------------------------------------------------------------
def test_cli_latents_truncation(tmp_path):
    assert main(["latents", "--checkpoint", str(_pth("biggan32_hier")), "--seeds", "3-4", "--truncation", "0.5",
                 "--out", str(tmp_path / "z.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), truncated_normal([3, 4], 20, 0.5))


def _inputs(tmp_path, name):
    np.save(tmp_path / "z.npy", REF[f"{name}/z"].numpy())
    np.save(tmp_path / "c.npy", REF[f"{name}/classes"].numpy())
    return ["--latents", str(tmp_path / "z.npy"), "--classes", str(tmp_path / "c.npy"), "--device", "cpu"]


def test_cli_render_pth(tmp_path):
    name = "biggan64_hier"
    assert main(["render", "--checkpoint", str(_pth(name)), *_inputs(tmp_path, name),
                 "--out", str(tmp_path / "img.npy")]) == 0
    assert_float32_close(np.load(tmp_path / "img.npy"), REF[f"{name}/images"])


def test_cli_features_pth(tmp_path):
    name = "biggan64_hier"
    args = ["features", "--checkpoint", str(_pth(name)), *_inputs(tmp_path, name)]
    assert main([*args, "--out", str(tmp_path / "f.npz")]) == 0
    with np.load(tmp_path / "f.npz") as f:
        assert [(k, f[k].shape) for k in f.files] == [(k, (2, *s)) for k, s in LAYERS_64]
        for k in f.files:
            assert f[k].dtype == np.float32
            assert_float32_close(f[k], REF[f"{name}/features/{k}"])
    assert main([*args, "--layers", "block3,block1.attention", "--out", str(tmp_path / "two.npz")]) == 0
    with np.load(tmp_path / "two.npz") as f:
        assert f.files == ["block1.attention", "block3"]  # generator order, whatever the order asked
    assert main([*args, "--layers", "block9", "--out", str(tmp_path / "bad.npz")]) == 1
    assert not (tmp_path / "bad.npz").exists()


def test_cli_features_stylegan2_with_truncation(tmp_path):
    ref = load_file(str(DATA / "stylegan2_reference.safetensors"))
    weights = {k[len("weights/"):]: v for k, v in ref.items() if k.startswith("weights/")}
    pt = tmp_path / "sg2.pt"
    torch.save({"g_ema": {k: v for k, v in weights.items() if k != "latent_avg"},
                "latent_avg": weights["latent_avg"]}, pt)
    np.save(tmp_path / "z.npy", ref["z"].numpy())
    assert main(["features", "--checkpoint", str(pt), "--latents", str(tmp_path / "z.npy"), "--truncation", "0.7",
                 "--device", "cpu", "--out", str(tmp_path / "f.npz")]) == 0
    want = [k[len("features/"):] for k in ref if k.startswith("features/")]
    with np.load(tmp_path / "f.npz") as f:
        assert sorted(f.files) == sorted(want)
        assert f.files == list(load_generator(pt).feature_shapes())
        for k in f.files:
            assert_float32_close(f[k], ref[f"features/{k}"])  # another CPU's summation order, per tensor
