"""BigGAN-deep in pytorch-pretrained-biggan's layout (config.json + pytorch_model.bin),
checked against that package's own outputs for a tiny random model
(tests/data/make_biggan_deep_reference.py): images at grid and between-grid
truncations, block features, ``truncated_noise_sample`` draws; plus the format
reader's strict errors, the canonical round trip and the CLI on the folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from labelfactory.cli import main
from labelfactory.generators import GENERATORS
from labelfactory.generators.checkpoints import CheckpointError, read_sidecar
from labelfactory.generators.loading import convert_checkpoint, load_generator, read_checkpoint

from helpers import assert_float32_close

DATA = Path(__file__).parent / "data"
FOLDER = DATA / "biggan_deep"
REF = load_file(str(DATA / "biggan_deep_reference.safetensors"))
TRUNCATIONS = sorted(float(k[2:]) for k in REF if k.startswith("z/"))
# the package's forward order: GenBlocks 0-5, the attention before GenBlock 4
LAYERS = ["block0", "block1", "block2", "block3", "block3.attention", "block4", "block5"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def backend():
    return load_generator(FOLDER)


def _copy(tmp_path) -> Path:
    return Path(shutil.copytree(FOLDER, tmp_path / "model"))


def test_folder_loads_with_the_config_json_values(backend):
    config = json.loads((FOLDER / "config.json").read_text())
    assert type(backend) is GENERATORS.get("biggan-deep")
    assert backend.arch_config == config
    assert (backend.z_dim, backend.resolution, backend.num_classes) == (8, 32, 5)
    bin_state = torch.load(FOLDER / "pytorch_model.bin", weights_only=True)
    assert set(backend.state_tensors()) == set(bin_state)
    torch.testing.assert_close(backend.class_embedding(), bin_state["embeddings.weight"].t())


@pytest.mark.parametrize("psi", TRUNCATIONS)
def test_images_equal_the_package(backend, psi):
    out = backend.synthesize(REF[f"z/{psi}"], REF["classes"], truncation=psi, features=False)
    assert out.features == {}
    assert_float32_close(out.images, REF[f"image/{psi}"])


def test_truncation_selects_distinct_statistics(backend):
    # the fixture's statistics differ per grid point, so a wrong index or mixing would show
    z = REF["z/0.333"]
    a, b = (backend.synthesize(z, REF["classes"], psi, features=False).images for psi in (0.333, 0.34))
    assert (a - b).abs().max() > 1e-2
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        backend.synthesize(z, REF["classes"], 1.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        backend.synthesize(z, REF["classes"], 0.0)


def test_features_equal_the_package_in_forward_order(backend):
    out = backend.synthesize(REF["z/0.55"][:1], REF["classes"][:1], truncation=0.55)
    assert list(out.features) == LAYERS
    assert list(backend.feature_shapes()) == LAYERS
    for name, shape in backend.feature_shapes().items():
        assert tuple(out.features[name].shape) == (1, *shape)
        assert_float32_close(out.features[name], REF[f"features/{name}"])


@pytest.mark.parametrize("psi", TRUNCATIONS)
def test_sample_latents_equal_truncated_noise_sample(backend, psi):
    z = backend.draw_latents(REF["seeds"].tolist(), truncation=psi)
    assert z.dtype == np.float32
    # a float64 inverse CDF rounded to float32 (|z| <= 2, ulp 2.4e-7): 1e-6 is 4 float32 ulps at 2
    np.testing.assert_allclose(z, REF[f"z/{psi}"].numpy(), rtol=0, atol=1e-6)


def test_classes_are_integer_ids(backend):
    z = REF["z/0.7"]
    with pytest.raises(ValueError, match="class-conditional"):
        backend.synthesize(z, None, 0.7)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        backend.synthesize(z, torch.tensor([1, 5]), 0.7)


def test_bin_path_with_config_beside_it_is_read():
    raw = read_checkpoint(FOLDER / "pytorch_model.bin")
    assert (raw.arch, raw.converted_from) == ("biggan-deep", "pytorch-pretrained-biggan")


def test_canonical_round_trip(backend, tmp_path):
    dest = tmp_path / "deep.safetensors"
    meta = convert_checkpoint(FOLDER, dest)
    assert read_sidecar(dest)["arch_config"] == json.loads((FOLDER / "config.json").read_text())
    again = load_generator(dest)
    assert again.generator_hash == backend.generator_hash == meta["generator_hash"]
    out = again.synthesize(REF["z/1.0"], REF["classes"], truncation=1.0, features=False)
    assert_float32_close(out.images, REF["image/1.0"])


@pytest.mark.parametrize("edit, key", [
    (lambda sd: sd.update({"generator.layers.9.gamma": torch.zeros(1)}), "generator.layers.9.gamma"),
    (lambda sd: sd.pop("generator.layers.4.snconv1x1_phi.weight_v"), "generator.layers.4.snconv1x1_phi.weight_v"),
])
def test_strict_keys_are_named(tmp_path, edit, key):
    folder = _copy(tmp_path)
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    edit(sd)
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_generator(folder)


def test_shape_mismatch_is_an_error(tmp_path):
    folder = _copy(tmp_path)
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    sd["embeddings.weight"] = torch.zeros(8, 6)
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="embeddings.weight"):
        load_generator(folder)


def test_config_and_weights_errors(tmp_path):
    folder = _copy(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        read_checkpoint(folder)
    (folder / "config.json").write_text('{"z_dim": 8,')
    with pytest.raises(CheckpointError, match="corrupt JSON"):
        read_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "n_stats"}))
    with pytest.raises(CheckpointError, match="n_stats"):
        read_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps({**config, "output_dim": 64}))
    with pytest.raises(CheckpointError, match="output_dim 64"):
        read_checkpoint(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        read_checkpoint(folder)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "absent")


def test_cli_render_on_the_folder(tmp_path):
    np.save(tmp_path / "z.npy", REF["z/0.7"].numpy())
    np.save(tmp_path / "c.npy", REF["classes"].numpy())
    out = tmp_path / "out.npy"
    assert main(["render", "--checkpoint", str(FOLDER), "--latents", str(tmp_path / "z.npy"),
                 "--classes", str(tmp_path / "c.npy"), "--truncation", "0.7", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert_float32_close(np.load(out), REF["image/0.7"])


def test_cli_latents_and_features_on_the_folder(tmp_path):
    z, c = tmp_path / "z.npy", tmp_path / "c.npy"
    seeds = ",".join(str(s) for s in REF["seeds"].tolist())
    assert main(["latents", "--checkpoint", str(FOLDER), "--seeds", seeds, "--truncation", "0.55",
                 "--out", str(z)]) == 0
    np.testing.assert_allclose(np.load(z), REF["z/0.55"].numpy(), rtol=0, atol=1e-6)  # as above: 4 ulps at 2
    np.save(z, REF["z/0.55"][:1].numpy())
    np.save(c, REF["classes"][:1].numpy())
    out = tmp_path / "feats.npz"
    assert main(["features", "--checkpoint", str(FOLDER), "--latents", str(z), "--classes", str(c),
                 "--truncation", "0.55", "--out", str(out), "--device", "cpu"]) == 0
    with np.load(out) as feats:
        assert list(feats) == LAYERS
        for name in LAYERS:
            assert_float32_close(feats[name], REF[f"features/{name}"])
