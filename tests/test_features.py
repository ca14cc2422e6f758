import json

import h5py
import numpy as np
import pytest
import torch

from labelfactory.features import FeatureStore, FeatureStoreError, extract_features, select_layers
from labelfactory.generators import images_to_uint8

from helpers import tiny_generator


@pytest.fixture
def setup(tmp_path):
    b = tiny_generator()
    ids = [f"s{i:08d}" for i in range(5)]
    z = b.draw_latents(range(5))
    return b, ids, z, tmp_path / "features.h5"


def test_layout_round_trip_and_attributes(setup):
    b, ids, z, out = setup
    layers = extract_features(b, ids, z, out, batch_size=2, truncation=0.8)
    assert layers == list(b.feature_shapes())
    store = FeatureStore.open(out)
    assert store.ids == ids and store.layers == layers
    assert store.generator_hash == b.generator_hash and store.resolution == 16
    assert store.feature_dim == sum(c for c, _, _ in b.feature_shapes().values())
    with torch.no_grad():
        ref = b.synthesize(torch.from_numpy(z[3:4]), truncation=0.8, noise="const").features
    got = store.read(ids[3])
    for name, (c, h, w) in b.feature_shapes().items():
        assert got[name].dtype == np.float16 and got[name].shape == (c, h, w)
        np.testing.assert_allclose(got[name].astype(np.float32), ref[name][0].numpy(), rtol=2e-3, atol=2e-3)
    with h5py.File(out) as f:
        assert f.attrs["noise"] == "const" and f.attrs["truncation"] == pytest.approx(0.8)
        assert json.loads(f.attrs["shapes"])["b16.conv1"] == [8, 16, 16]
        assert f[f"{ids[0]}/b16.conv1"].chunks is not None


def test_layer_selection_keeps_generator_order(setup):
    b, ids, z, out = setup
    layers = extract_features(b, ids, z, out, layers=["b16.conv1", "b8.conv0"])
    assert layers == ["b8.conv0", "b16.conv1"]
    assert set(FeatureStore.open(out).read(ids[0])) == set(layers)
    with pytest.raises(ValueError, match=r"unknown feature layers \['b32.conv0'\]"):
        select_layers(b, ["b32.conv0"])


def test_mismatching_annotated_images_are_refused_and_nothing_written(setup):
    b, ids, z, out = setup
    images = images_to_uint8(torch.from_numpy(b.render(z)))
    extract_features(b, ids, z, out, expected_images=images)  # the right images pass
    out.unlink()
    with pytest.raises(FeatureStoreError, match="differ from the annotated"):
        extract_features(b, ids, z, out, expected_images=images, truncation=0.5)
    assert not out.exists() and not list(out.parent.glob("*.tmp"))


def test_duplicate_ids_are_refused(setup):
    b, ids, z, out = setup
    with pytest.raises(ValueError, match="unique id"):
        extract_features(b, ids[:4] + ids[:1], z, out)


def test_corrupt_and_incomplete_files_are_reported(setup, tmp_path):
    b, ids, z, out = setup
    extract_features(b, ids, z, out)
    data = out.read_bytes()
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(FeatureStoreError, match="trunc.h5"):
        FeatureStore.open(trunc)
    with h5py.File(out, "a") as f:
        del f[f"{ids[2]}/b8.conv1"]
    with pytest.raises(FeatureStoreError, match=r"missing: \['s00000002/b8.conv1'\]"):
        FeatureStore.open(out)
    with pytest.raises(FeatureStoreError, match="no features for image 'nope'"):
        FeatureStore(out, b.generator_hash, ["b4.conv1"], {}, 16, ids).read("nope")
