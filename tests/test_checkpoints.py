"""Checkpoint readers on format-true files: rosinality ``.pt``, NVIDIA network
pickles (checked against an independent re-statement of NVIDIA's forward), the
restricted unpickler, corrupt files, and the canonical round trip."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelfactory.generators.base import content_hash
from labelfactory.generators.checkpoints import CheckpointError, sidecar_path
from labelfactory.generators.loading import convert_checkpoint, load_generator, read_checkpoint
from labelfactory.generators.nvidia_pickle import UntrustedPickleError
from labelfactory.core.io import sha256_file

from formats import (EXEC_MARKER_ENV, make_nvidia_pickle, nvidia_standins, rosinality_generator,
                     save_rosinality)

ROSINALITY_KEYS_SIZE8_NMLP2 = [
    "style.1.weight", "style.1.bias", "style.2.weight", "style.2.bias",
    "input.input",
    "conv1.conv.weight", "conv1.conv.modulation.weight", "conv1.conv.modulation.bias",
    "conv1.noise.weight", "conv1.activate.bias",
    "to_rgb1.bias", "to_rgb1.conv.weight", "to_rgb1.conv.modulation.weight", "to_rgb1.conv.modulation.bias",
    "convs.0.conv.weight", "convs.0.conv.blur.kernel", "convs.0.conv.modulation.weight",
    "convs.0.conv.modulation.bias", "convs.0.noise.weight", "convs.0.activate.bias",
    "convs.1.conv.weight", "convs.1.conv.modulation.weight", "convs.1.conv.modulation.bias",
    "convs.1.noise.weight", "convs.1.activate.bias",
    "to_rgbs.0.bias", "to_rgbs.0.upsample.kernel", "to_rgbs.0.conv.weight", "to_rgbs.0.conv.modulation.weight",
    "to_rgbs.0.conv.modulation.bias",
    "noises.noise_0", "noises.noise_1", "noises.noise_2",
]


def _z(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(n, dim).astype(np.float32)


# --- rosinality ----------------------------------------------------------------------
def test_generator_has_rosinalitys_exact_state_dict_layout():
    g = rosinality_generator(size=8, style_dim=8, n_mlp=2, channels={4: 8, 8: 6})
    sd = g.state_dict()
    assert [k for k in sd if k != "latent_avg"] == ROSINALITY_KEYS_SIZE8_NMLP2
    assert sd["conv1.conv.weight"].shape == (1, 8, 8, 3, 3)
    assert sd["convs.0.conv.weight"].shape == (1, 6, 8, 3, 3)
    assert sd["to_rgbs.0.conv.weight"].shape == (1, 3, 6, 1, 1)
    assert sd["to_rgb1.bias"].shape == (1, 3, 1, 1)
    assert sd["conv1.noise.weight"].shape == (1,)
    assert [tuple(sd[f"noises.noise_{i}"].shape) for i in range(3)] == [(1, 1, 4, 4), (1, 1, 8, 8), (1, 1, 8, 8)]


def test_rosinality_real_channel_table(tmp_path):
    """A size-8 rosinality generator has 512 channels at 4 and 8 (channel_multiplier does not
    act below 64); style_dim is kept small so the file stays small."""
    g = rosinality_generator(size=8, style_dim=8, n_mlp=2, channels={4: 512, 8: 512})
    path = save_rosinality(tmp_path / "550000.pt", g, "converted")
    raw = read_checkpoint(path)
    assert raw.converted_from == "rosinality"
    cfg = raw.arch_config
    assert (cfg["size"], cfg["style_dim"], cfg["z_dim"], cfg["n_mlp"]) == (8, 8, 8, 2)
    assert cfg["channels"] == {"4": 512, "8": 512}
    z = _z(2, 8)
    with torch.no_grad():
        want = g(torch.from_numpy(z), truncation=0.5, noise_mode="const").numpy()
    np.testing.assert_allclose(load_generator(path).render(z, truncation=0.5), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["train", "converted", "bare"])
def test_rosinality_layouts_load_and_render_like_the_source(tmp_path, layout):
    g = rosinality_generator(size=16, style_dim=16, n_mlp=3)
    path = save_rosinality(tmp_path / "ckpt.pt", g, layout)
    b = load_generator(path)
    cfg = b.arch_config
    assert (cfg["size"], cfg["style_dim"], cfg["n_mlp"], cfg["z_dim"]) == (16, 16, 3, 16)
    assert {int(k): v for k, v in cfg["channels"].items()} == g.cfg.channels
    if layout == "converted":
        torch.testing.assert_close(b.module.latent_avg, g.latent_avg, rtol=0, atol=0)
    else:  # no latent_avg in the file: the mean w of 4096 seeded z stands in
        assert not torch.allclose(b.module.latent_avg, g.latent_avg)
        torch.testing.assert_close(b.module.latent_avg, g.mean_latent(4096))
        g.latent_avg.copy_(g.mean_latent(4096))
    z = _z(3, 16)
    with torch.no_grad():
        want = g(torch.from_numpy(z), truncation=0.7, noise_mode="const").numpy()
    np.testing.assert_allclose(b.render(z, truncation=0.7, noise="const"), want, rtol=1e-5, atol=1e-6)


def test_rosinality_unknown_dict_is_refused(tmp_path):
    torch.save({"model": {"weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="neither 'g_ema' nor"):
        read_checkpoint(tmp_path / "other.pt")


# --- NVIDIA stylegan2-ada-pytorch (independent reference of training/networks.py) ---------------
def _nv_fc(x, w, b, lr=1.0):
    return F.linear(x, w * (lr / math.sqrt(w.shape[1])), b * lr)


def nv_mapping(t, z, psi, lr=0.01):
    x = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)
    i = 0
    while f"mapping.fc{i}.weight" in t:
        x = F.leaky_relu(_nv_fc(x, t[f"mapping.fc{i}.weight"], t[f"mapping.fc{i}.bias"], lr), 0.2) * math.sqrt(2)
        i += 1
    return t["mapping.w_avg"] + psi * (x - t["mapping.w_avg"])


def _nv_upfirdn(x, f, pad0, pad1, gain, up=1):
    """Zero-insert ×up, pad (pad0 before, pad1 after, both axes), convolve with f × gain."""
    b, c, h, w = x.shape
    if up > 1:
        y = x.new_zeros(b, c, h * up, w * up)
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, [pad0, pad1, pad0, pad1])
    k = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def _nv_modconv(x, weight, styles, demodulate, up):
    b, o, i, k = x.shape[0], weight.shape[0], weight.shape[1], weight.shape[-1]
    wm = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        wm = wm * torch.rsqrt(wm.square().sum([2, 3, 4]) + 1e-8)[:, :, None, None, None]
    x = x.reshape(1, b * i, *x.shape[2:])
    if up == 1:
        out = F.conv2d(x, wm.reshape(b * o, i, k, k), padding=k // 2, groups=b)
    else:
        out = F.conv_transpose2d(x, wm.transpose(1, 2).reshape(b * i, o, k, k), stride=2, groups=b)
    return out.reshape(b, o, *out.shape[2:])


def _nv_layer(t, p, x, w, clamp, up):
    styles = _nv_fc(w, t[f"{p}.affine.weight"], t[f"{p}.affine.bias"])
    x = _nv_modconv(x, t[f"{p}.weight"], styles, True, up)
    if up == 2:
        x = _nv_upfirdn(x, t[f"{p}.resample_filter"], 1, 1, gain=4)
    x = x + t[f"{p}.noise_const"] * t[f"{p}.noise_strength"]
    x = F.leaky_relu(x + t[f"{p}.bias"][None, :, None, None], 0.2) * math.sqrt(2)
    return x if clamp is None else x.clamp(-clamp, clamp)


def _nv_torgb(t, p, x, w, clamp):
    styles = _nv_fc(w, t[f"{p}.affine.weight"], t[f"{p}.affine.bias"]) / math.sqrt(x.shape[1])
    y = _nv_modconv(x, t[f"{p}.weight"], styles, False, 1) + t[f"{p}.bias"][None, :, None, None]
    return y if clamp is None else y.clamp(-clamp, clamp)


def nv_synthesis(t, ws, clamp):
    """ws ``[B, num_ws, w_dim]`` → image, as NVIDIA's 'skip' SynthesisNetwork with noise_mode='const'."""
    res = sorted(int(k.split(".")[1][1:]) for k in t if k.endswith(".torgb.bias"))
    x = t["synthesis.b4.const"][None].repeat(ws.shape[0], 1, 1, 1)
    x = _nv_layer(t, "synthesis.b4.conv1", x, ws[:, 0], clamp, 1)
    img = _nv_torgb(t, "synthesis.b4.torgb", x, ws[:, 1], clamp)
    i = 1
    for r in res[1:]:
        p = f"synthesis.b{r}"
        x = _nv_layer(t, f"{p}.conv0", x, ws[:, i], clamp, 2)
        x = _nv_layer(t, f"{p}.conv1", x, ws[:, i + 1], clamp, 1)
        img = _nv_upfirdn(img, t[f"{p}.resample_filter"], 2, 1, gain=4, up=2) + _nv_torgb(t, f"{p}.torgb", x,
                                                                                          ws[:, i + 2], clamp)
        i += 2
    return img


def _assert_matches(ours, ref):
    ref = torch.as_tensor(ref).float()
    torch.testing.assert_close(torch.as_tensor(ours), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def _arm_exec_marker(monkeypatch, tmp_path):
    """From now on, executing the stand-in networks.py source creates the returned file
    (armed after building, which imports networks.py the ordinary way)."""
    marker = tmp_path / "networks_source_was_executed"
    monkeypatch.setenv(EXEC_MARKER_ENV, str(marker))
    return marker


@pytest.mark.parametrize("clamp", [None, 0.5])
def test_nvidia_pickle_matches_nvidia_forward(tmp_path, monkeypatch, clamp):
    t = make_nvidia_pickle(tmp_path / "network-snapshot.pkl", tmp_path / "standins", conv_clamp=clamp)
    t = {k: v.double() for k, v in t.items()}
    exec_marker = _arm_exec_marker(monkeypatch, tmp_path)

    b = load_generator(tmp_path / "network-snapshot.pkl")
    assert not exec_marker.exists()
    assert not any(m.split(".")[0] in ("dnnlib", "torch_utils", "training") for m in sys.modules)
    cfg = b.arch_config
    assert (cfg["size"], cfg["z_dim"], cfg["style_dim"], cfg["n_mlp"]) == (16, 12, 10, 2)
    assert cfg["channels"] == {"4": 24, "8": 12, "16": 6}
    assert cfg["lr_mlp"] == pytest.approx(0.01) and cfg["conv_clamp"] == clamp

    z = _z(3, 12, seed=1)
    ws = nv_mapping(t, torch.from_numpy(z).double(), psi=0.7)[:, None].expand(-1, 6, -1)
    ref = nv_synthesis(t, ws, clamp)
    _assert_matches(b.render(z, truncation=0.7, noise="const"), ref)
    # a different w per layer checks which w each layer reads
    ws = torch.randn(2, 6, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        ours = b.module.synthesis(ws.float(), noise_mode="const")
    _assert_matches(ours, nv_synthesis(t, ws, clamp))
    if clamp is not None:  # the clamp is active, not a no-op at these weights
        assert (nv_synthesis(t, ws, None) - nv_synthesis(t, ws, clamp)).abs().max() > 0.1


def test_nvidia_pickle_is_format_true_and_marker_armed(tmp_path, monkeypatch):
    """Control: NVIDIA's own loading path (plain pickle + persistence) executes the
    embedded source, so the marker really detects execution."""
    make_nvidia_pickle(tmp_path / "net.pkl", tmp_path / "standins")
    exec_marker = _arm_exec_marker(monkeypatch, tmp_path)
    with nvidia_standins(tmp_path / "standins2"), open(tmp_path / "net.pkl", "rb") as f:
        data = pickle.load(f)
        assert type(data["G_ema"]).__name__ == "Generator" and data["G_ema"].mapping.fc0.weight.shape == (10, 12)
        assert isinstance(data["G_ema"].mapping.fc0.weight_gain, np.float64)
        assert type(data["G_ema"]._init_kwargs["mapping_kwargs"]).__name__ == "EasyDict"
    assert exec_marker.exists()


@pytest.mark.parametrize("kwargs, match", [
    (dict(architecture="resnet"), "'skip'"),
])
def test_nvidia_unsupported_variants_are_refused(tmp_path, kwargs, match):
    make_nvidia_pickle(tmp_path / "net.pkl", tmp_path / "standins", **kwargs)
    with pytest.raises(CheckpointError, match=match):
        load_generator(tmp_path / "net.pkl")


class _Reduce:
    """Pickles as ``func(*args)``: what a malicious pickle asks the unpickler to call."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "subprocess.call", "os.system (protocol 0)"])
def test_restricted_unpickler_refuses_code(tmp_path, payload):
    marker = tmp_path / "pwned"
    if payload == "os.system (protocol 0)":  # a hand-written GLOBAL 'os system', as in published exploits
        blob = b"(dp0\nS'G_ema'\np1\ncos\nsystem\np2\n(S'touch " + str(marker).encode() + b"'\ntRs."
        blob = b"\x80\x02" + blob  # protocol-2 header so the file sniffs as a pickle
    else:
        func, args = {"os.system": (os.system, (f"touch {marker}",)),
                      "builtins.eval": (eval, (f"open({str(marker)!r}, 'w')",)),
                      "subprocess.call": (subprocess.call, (["touch", str(marker)],))}[payload]
        blob = pickle.dumps({"G_ema": _Reduce(func, args), "augment_pipe": None})
    (tmp_path / "evil.pkl").write_bytes(blob)
    with pytest.raises(UntrustedPickleError, match="refusing to load"):
        load_generator(tmp_path / "evil.pkl")
    assert not marker.exists()


# --- corrupt files ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """One small rosinality .pt, its canonical conversion and an NVIDIA pickle."""
    d = tmp_path_factory.mktemp("sources")
    g = rosinality_generator(size=8, style_dim=8, n_mlp=2, channels={4: 8, 8: 6})
    pt = save_rosinality(d / "g.pt", g, "converted")
    convert_checkpoint(pt, d / "g.safetensors")
    make_nvidia_pickle(d / "g.pkl", d / "standins", size=8)
    return {"pt": pt, "safetensors": d / "g.safetensors", "pkl": d / "g.pkl", "generator": g}


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _drop_sidecar_sha(path):
    side = sidecar_path(path)
    meta = json.loads(side.read_text())
    del meta["sha256"]
    side.write_text(json.dumps(meta))


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated safetensors": ("safetensors", lambda p: (_drop_sidecar_sha(p), _truncate(p)), "corrupt safetensors"),
    "safetensors sha256 differs from sidecar": ("safetensors", _flip_last_byte, "sha256 differs"),
    "missing sidecar": ("safetensors", lambda p: sidecar_path(p).unlink(), "no sidecar"),
    "corrupt sidecar JSON": ("safetensors", lambda p: sidecar_path(p).write_text('{"arch": "stylegan2", '),
                             "corrupt sidecar JSON"),
    "truncated .pt": ("pt", _truncate, "cannot read torch checkpoint"),
    "truncated .pkl": ("pkl", _truncate, "not a readable network pickle"),
    "empty file": ("pt", lambda p: p.write_bytes(b""), "is empty"),
    "random bytes": ("pt", lambda p: p.write_bytes(b"\x13" + np.random.RandomState(0).bytes(4095)),
                     "unknown checkpoint format"),
    "pickle header then garbage": ("pkl", lambda p: p.write_bytes(b"\x80\x04" + b"\xff" * 64),
                                   "not a readable network pickle"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_files_raise_checkpoint_error_naming_the_file(tmp_path, sources, case):
    kind, corrupt, match = CORRUPTIONS[case]
    path = tmp_path / f"damaged_{kind}_file.{kind}"
    shutil.copy(sources[kind], path)
    if kind == "safetensors":
        shutil.copy(sidecar_path(sources[kind]), sidecar_path(path))
    load_generator(path)  # intact copy loads
    corrupt(path)
    with pytest.raises(CheckpointError, match=match) as err:
        load_generator(path)
    assert f"damaged_{kind}_file" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_generator(tmp_path / "nope.pt")


# --- canonical round trip ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pt", "pkl"])
def test_convert_round_trip_is_exact(tmp_path, sources, kind):
    src = sources[kind]
    direct = load_generator(src)
    meta = convert_checkpoint(src, tmp_path / "out" / "g.safetensors", source_url="https://example.org/g",
                              source_sha256=sha256_file(src))
    out = tmp_path / "out" / "g.safetensors"
    assert json.loads(sidecar_path(out).read_text()) == meta
    assert meta["sha256"] == sha256_file(out) and meta["source_sha256"] == sha256_file(src)
    assert meta["converted_from"] == {"pt": "rosinality", "pkl": "stylegan2-ada-pickle"}[kind]
    assert sorted(p.name for p in out.parent.iterdir()) == ["g.json", "g.safetensors"]  # no temporary files left
    back = load_generator(out)
    assert back.generator_hash == direct.generator_hash == meta["generator_hash"]
    assert content_hash(back.arch, back.arch_config, back.state_tensors()) == meta["generator_hash"]
    z = _z(4, direct.z_dim)
    np.testing.assert_array_equal(back.render(z, truncation=0.6), direct.render(z, truncation=0.6))


@pytest.mark.parametrize("name", ["stylegan2-car-32", "biggan-32", "vqgan-32"])
def test_the_shipped_toy_generators_load(name):
    """The workflow's default generators, as shipped (their sidecars name formats, not modules)."""
    from pathlib import Path

    backend = load_generator(Path(__file__).resolve().parents[1] / "weights" / "toy" / f"{name}.safetensors")
    assert backend.resolution == 32
