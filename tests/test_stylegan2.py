from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from labelfactory.generators import GENERATORS, images_to_uint8
from labelfactory.generators.ops import make_kernel, upfirdn2d
from labelfactory.generators.stylegan2 import Generator, StyleGAN2Backend, StyleGAN2Config

from helpers import assert_float32_close, load_script, tiny_generator

REF = Path(__file__).parent / "data" / "stylegan2_reference.safetensors"


def _reference():
    data = load_file(str(REF))
    weights = {k[len("weights/"):]: v for k, v in data.items() if k.startswith("weights/")}
    feats = {k[len("features/"):]: v for k, v in data.items() if k.startswith("features/")}
    recipe = load_script(REF.with_name("make_stylegan2_reference.py"))
    g = Generator(StyleGAN2Config(**recipe.CONFIG))
    g.load_state_dict(weights, strict=True)
    return g, data["z"], data["image"], feats, recipe.TRUNCATION


@pytest.mark.parametrize("fused", [False, True])
def test_forward_equals_saved_reference(fused):
    g, z, image, feats, psi = _reference()
    with torch.no_grad():
        out, got = g(z, truncation=psi, noise_mode="const", return_features=True, fused=fused)
    # a reference made on another CPU: float32 summation-order noise, scaled to each tensor (helpers)
    assert_float32_close(out, image)
    assert set(got) == set(feats)  # (safetensors stores keys sorted; order is tested below)
    for name in feats:
        assert_float32_close(got[name], feats[name])


def test_feature_taps_native_resolution_in_generator_order():
    g, z, *_ = _reference()
    with torch.no_grad():
        _, feats = g(z, return_features=True)
    assert list(feats) == ["b4.conv1", "b8.conv0", "b8.conv1", "b16.conv0", "b16.conv1"]
    for name, shape in g.feature_shapes().items():
        assert tuple(feats[name].shape) == (3, *shape)


def test_noise_modes():
    b = tiny_generator()
    z = b.draw_latents([1, 2])
    const1, const2 = b.render(z, noise="const"), b.render(z, noise="const")
    np.testing.assert_array_equal(const1, const2)  # re-rendering a latent is exact
    r1, r1b, r2 = (b.render(z, noise="random", noise_seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(r1, r1b)
    assert np.abs(r1 - r2).max() > 1e-3 and np.abs(r1 - const1).max() > 1e-3
    assert np.abs(b.render(z, noise="none") - const1).max() > 1e-3
    with pytest.raises(ValueError, match="noise mode"):
        b.render(z, noise="sometimes")


def test_truncation_zero_gives_the_average_image():
    b = tiny_generator()
    img = b.render(b.draw_latents(range(4)), truncation=0.0)
    np.testing.assert_allclose(img, np.broadcast_to(img[:1], img.shape), atol=1e-5)


def test_per_layer_latents_equal_broadcast():
    g = tiny_generator().module
    w = g.mapping(torch.randn(2, 16))
    with torch.no_grad():
        a = g.synthesis(w)
        b = g.synthesis(w[:, None].expand(-1, g.n_latent, -1).clone())
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="per-layer latents"):
        g.synthesis(torch.zeros(2, 3, 16))


def test_batching_does_not_change_images():
    b = tiny_generator()
    z = b.draw_latents(range(5))
    np.testing.assert_allclose(b.render(z, batch_size=1), b.render(z, batch_size=5), atol=1e-5)


def test_latents_follow_nvidia_seed_convention():
    b = tiny_generator()
    z = b.draw_latents([3, 11])
    np.testing.assert_array_equal(z[1], np.random.RandomState(11).randn(16).astype(np.float32))
    with pytest.raises(ValueError, match=r"latents must have shape \[N, 16\]"):
        b.render(np.zeros((2, 15), np.float32))


def test_unconditional_backend_rejects_classes():
    b = tiny_generator()
    with pytest.raises(ValueError, match="unconditional"):
        b.render(b.draw_latents([0]), classes=[3])


def test_upfirdn2d_matches_direct_definition():
    x = torch.randn(2, 3, 5, 6)
    k = make_kernel([1, 3, 3, 1])
    y = upfirdn2d(x, k, up=2, pad=(2, 1))
    # direct: zero-insert, pad, full 2-D convolution (kernel flipped = itself here)
    z = torch.zeros(2, 3, 10, 12)
    z[:, :, ::2, ::2] = x
    z = torch.nn.functional.pad(z, (2, 1, 2, 1))
    ref = torch.nn.functional.conv2d(z.reshape(-1, 1, *z.shape[2:]), torch.flip(k, [0, 1])[None, None])
    torch.testing.assert_close(y, ref.reshape(2, 3, 10, 12))
    d = upfirdn2d(x, k, down=2, pad=(1, 1))
    assert d.shape == (2, 3, 2, 3)
    # an asymmetric kernel is convolved, not correlated
    impulse = torch.zeros(1, 1, 5, 5)
    impulse[0, 0, 2, 2] = 1
    ka = torch.arange(9.0).reshape(3, 3)
    torch.testing.assert_close(upfirdn2d(impulse, ka, pad=(1, 1))[0, 0, 1:4, 1:4], ka)


def test_registry_and_config_errors():
    assert "stylegan2" in GENERATORS
    with pytest.raises(KeyError, match="unknown generator backend 'nope'"):
        GENERATORS.get("nope")
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Config(size=24)
    with pytest.raises(ValueError, match="lacks channel counts"):
        StyleGAN2Config(size=16, channels={4: 8, 8: 8})


def test_from_tensors_is_strict():
    b = tiny_generator()
    t = b.state_tensors()
    t.pop("conv1.noise.weight")
    t["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing \['conv1.noise.weight'\].*unexpected \['extra.weight'\]"):
        StyleGAN2Backend.from_tensors(b.arch_config, t)


def test_images_to_uint8():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert images_to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_generator_hash_tracks_weights():
    a, b, c = tiny_generator(0), tiny_generator(0), tiny_generator(1)
    assert a.generator_hash == b.generator_hash != c.generator_hash
