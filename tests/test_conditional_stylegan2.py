"""Class-conditional NVIDIA StyleGAN2-ADA pickles (``c_dim > 0``, ``mapping.embed``):
loaded and rendered against NVIDIA's own forward (tests/data recipe), class ids
checked, through the backend and the CLI; numpy 1.x and 2 pickle names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from labelfactory.cli import main
from labelfactory.generators.loading import convert_checkpoint, load_generator
from labelfactory.generators.nvidia_pickle import UntrustedPickleError

from formats import EXEC_MARKER_ENV, make_nvidia_pickle
from helpers import assert_float32_close, load_script

REF_PATH = Path(__file__).parent / "data" / "conditional_stylegan2_reference.safetensors"
REF = load_file(str(REF_PATH))
RECIPE = load_script(REF_PATH.with_name("make_conditional_stylegan2_reference.py"))
Z, CLASSES = REF["z"].numpy(), REF["classes"].numpy()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pickle(tmp_path: Path, case: str = "embed_w", numpy1: bool = False) -> Path:
    """The case's generator as a format-true network pickle, with the reference's weights."""
    weights = {k.split("/weights/")[1]: v for k, v in REF.items() if k.startswith(f"{case}/weights/")}
    path = tmp_path / f"{case}{'-numpy1' if numpy1 else ''}.pkl"
    make_nvidia_pickle(path, tmp_path / "standins", **RECIPE.ARCH, **RECIPE.CASES[case], tensors=weights,
                       numpy1=numpy1)
    return path


def _assert_matches(ours, ref):
    """Up to float32 summation-order noise of another CPU, scaled to the reference (helpers)."""
    assert_float32_close(ours, ref)


@pytest.mark.parametrize("case", list(RECIPE.CASES))
def test_conditional_pickle_matches_nvidia_forward(tmp_path, monkeypatch, case):
    pkl = _pickle(tmp_path, case)
    marker = tmp_path / "networks_source_was_executed"
    monkeypatch.setenv(EXEC_MARKER_ENV, str(marker))
    b = load_generator(pkl)
    assert not marker.exists()
    embed = RECIPE.CASES[case].get("embed_features") or RECIPE.ARCH["w_dim"]
    cfg = b.arch_config
    assert (b.z_dim, b.num_classes, cfg["c_dim"], cfg["embed_dim"]) == (12, 10, 10, embed)
    assert b.draw_latents([0, 1]).shape == (2, 12)
    for psi in RECIPE.PSIS:
        ref = REF[f"{case}/image/psi{psi}"]
        # rows 1 and 2 share z: the class alone changes the image, so the embedding is exercised
        assert (ref[1] - ref[2]).abs().max() > 0.1 * ref.abs().max()
        _assert_matches(b.render(Z, CLASSES, truncation=psi), ref)


def test_canonical_round_trip_keeps_the_embedding(tmp_path):
    src = load_generator(_pickle(tmp_path))
    meta = convert_checkpoint(_pickle(tmp_path), tmp_path / "g.safetensors")
    b = load_generator(tmp_path / "g.safetensors")
    assert {"embed.weight", "embed.bias"} <= set(b.state_tensors())
    assert (meta["arch_config"]["c_dim"], b.num_classes) == (10, 10)
    assert b.generator_hash == src.generator_hash == meta["generator_hash"]
    _assert_matches(b.render(Z, CLASSES, truncation=0.6), REF["embed_w/image/psi0.6"])


def test_unconditional_config_has_no_class_fields(tmp_path):
    make_nvidia_pickle(tmp_path / "u.pkl", tmp_path / "standins")
    b = load_generator(tmp_path / "u.pkl")
    assert b.num_classes == 0 and not {"c_dim", "embed_dim"} & set(b.arch_config)
    assert not any(k.startswith("embed.") for k in b.state_tensors())


def test_synthesize_takes_class_ids_and_taps_features(tmp_path):
    b = load_generator(_pickle(tmp_path))
    s = b.synthesize(torch.from_numpy(Z), torch.from_numpy(CLASSES), truncation=0.6)
    _assert_matches(s.images, REF["embed_w/image/psi0.6"])
    assert {k: tuple(v.shape[1:]) for k, v in s.features.items()} == b.feature_shapes()
    assert (s.features["b4.conv1"][1] - s.features["b4.conv1"][2]).abs().max() > 0


@pytest.mark.parametrize("classes, match", [
    ([0, 3, 7, 10], r"in \[0, 10\)"),
    ([-1, 3, 7, 9], r"in \[0, 10\)"),
    ([0, 3, 7], r"need 4 classes in \[0, 10\)"),
    (None, "class-conditional: give a class per sample"),
])
def test_wrong_class_ids_are_refused(tmp_path, classes, match):
    b = load_generator(_pickle(tmp_path))
    with pytest.raises(ValueError, match=match):
        b.render(Z, classes)
    with pytest.raises(ValueError, match=match):
        b.synthesize(torch.from_numpy(Z), None if classes is None else torch.tensor(classes))


def test_cli_latents_render_features(tmp_path, capsys):
    pkl = _pickle(tmp_path)
    z, c, img = tmp_path / "z.npy", tmp_path / "classes.npy", tmp_path / "o.npy"
    assert main(["latents", "--checkpoint", str(pkl), "--seeds", "0-3", "--out", str(z)]) == 0
    assert np.load(z).shape == (4, 12)
    np.save(z, Z)
    np.save(c, CLASSES)
    common = ["--checkpoint", str(pkl), "--latents", str(z), "--classes", str(c), "--device", "cpu"]
    assert main(["render", *common, "--truncation", "0.6", "--out", str(img)]) == 0
    _assert_matches(np.load(img), REF["embed_w/image/psi0.6"])
    assert main(["features", *common, "--layers", "b8.conv0", "--out", str(tmp_path / "f.npz")]) == 0
    with np.load(tmp_path / "f.npz") as f:
        want = load_generator(pkl).synthesize(torch.from_numpy(Z), torch.from_numpy(CLASSES)).features
        assert f.files == ["b8.conv0"]
        _assert_matches(f["b8.conv0"], want["b8.conv0"])

    np.save(c, np.array([0, 3, 7, 12]))
    capsys.readouterr()
    assert main(["render", *common, "--out", str(tmp_path / "bad.npy")]) == 1
    assert not (tmp_path / "bad.npy").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ERROR" in err[0] and "[0, 10)" in err[0]


# --- numpy 1.x and numpy 2 pickle names -------------------------------------------------------
def test_numpy1_and_numpy2_pickles_load_alike(tmp_path):
    new, old = _pickle(tmp_path), _pickle(tmp_path, numpy1=True)
    new_bytes, old_bytes = new.read_bytes(), old.read_bytes()
    assert b"numpy._core.multiarray" in new_bytes and b"numpy.core" not in new_bytes
    assert b"cnumpy.core.multiarray\nscalar\n" in old_bytes and b"numpy._core" not in old_bytes
    a, b = load_generator(new), load_generator(old)
    assert a.generator_hash == b.generator_hash
    _assert_matches(b.render(Z, CLASSES), REF["embed_w/image/psi1.0"])


@pytest.mark.parametrize("module, name", [
    ("numpy.testing._private.utils", "runstring"),  # exec(code, {}): a known pickle gadget
    ("numpy", "load"),
    ("numpy.core.multiarray", "fromfile"),
    ("numpy._core.multiarray", "fromfile"),
    ("numpy.core.numeric", "fromstring"),
])
def test_other_numpy_globals_are_refused(tmp_path, module, name):
    """Only the names numpy scalars and arrays pickle through are allowed, under either prefix."""
    marker = tmp_path / "pwned"
    call = f"c{module}\n{name}\n(Vopen({str(marker)!r}, 'w').close()\n}}tR."  # name(code, {})
    (tmp_path / "evil.pkl").write_bytes(b"\x80\x02" + call.encode())
    with pytest.raises(UntrustedPickleError, match="refusing to load"):
        load_generator(tmp_path / "evil.pkl")
    assert not marker.exists()
