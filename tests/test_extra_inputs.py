"""Extra per-pixel inputs of the interpreters (``interpreter.extra_inputs``: the image's RGB, the
pixel coordinates), for the MLP and conv interpreters, in training, inference, validation and synthesis."""

import dataclasses
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from test_conv_interpreter import TAPS
from test_interpreter import SHAPES, batch_features, random_maps, upsampled, write_store
from test_tap_normalisation import assert_same_state

from labelfactory.annotations.annotation_set import AnnotationSet
from labelfactory.annotations.labels import LabelSet
from labelfactory.cli import main
from labelfactory.config.specs import ValidationSpec
from labelfactory.features import FeatureStore, extract_features
from labelfactory.generators.base import images_to_uint8
from labelfactory.interpreters import INTERPRETERS, TrainingData, interpreter_features
from labelfactory.interpreters.base import IMAGE, coordinate_maps, extra_input_maps, rgb_channels
from labelfactory.interpreters.conv import ConvInterpreterConfig, train_conv_ensemble
from labelfactory.interpreters.mlp import MLPEnsembleConfig, train_mlp_ensemble
from labelfactory.interpreters.validation import cross_validate_interpreter, rank_taps
from labelfactory.synthesis.shards import ShardSettings, synthesize_shard
from labelfactory.synthesis.uncertainty import mean_labels, vote_labels

from helpers import tiny_generator, tiny_mask

torch.set_num_threads(1)

RES = 16
PALETTE = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])  # one colour per class
MLP = MLPEnsembleConfig(num_members=2, eval_every=50, patience=100, max_batches=300, seed=0)
CONV = ConvInterpreterConfig(iterations=150, channels=(8, 8, 8), num_members=1, seed=0)


def colour_case(n, shapes, seed=0):
    """Taps of pure noise and labels that only the image's colour gives: 4x4-pixel blocks of random
    classes, each pixel its class's colour under noise."""
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, 3, (n, RES // 4, RES // 4)).repeat(4, 1).repeat(4, 2).astype(np.uint8)
    images = np.clip(PALETTE[masks] + rng.normal(0, 25, (*masks.shape, 3)), 0, 255).astype(np.uint8)
    return random_maps(n, shapes, seed=seed + 1), masks, images


def with_image(maps, images):
    return {**batch_features(maps), IMAGE: torch.from_numpy(images)}


def accuracy(ens, maps, masks, images):
    return float((mean_labels(ens.member_probabilities(with_image(maps, images))).numpy() == masks).mean())


# -- the inputs ----------------------------------------------------------------------
def test_extra_input_maps_are_rgb_and_coordinates_in_minus_one_to_one():
    coords = coordinate_maps(5)
    assert coords.shape == (1, 2, 5, 5) and coords.min() == -1 and coords.max() == 1
    assert torch.equal(coords[0, 0, :, 0], torch.linspace(-1, 1, 5)) and (coords[0, 0].diff(dim=1) == 0).all()
    assert torch.equal(coords[0, 1, 0], torch.linspace(-1, 1, 5)) and (coords[0, 1].diff(dim=0) == 0).all()
    g = torch.Generator().manual_seed(0)
    raw = torch.rand(2, 3, 4, 4, generator=g) * 2.2 - 1.1  # a generator's output, a little out of range
    stored = torch.from_numpy(images_to_uint8(raw))
    rgb = rgb_channels(raw)
    assert torch.equal(rgb, rgb_channels(stored)) and rgb.min() >= -1 and rgb.max() <= 1  # as the shards store it
    assert torch.equal(rgb, stored.permute(0, 3, 1, 2).float() / 127.5 - 1)
    x = extra_input_maps(("coords", "rgb"), 2, 4, stored, "cpu")
    assert x.shape == (2, 5, 4, 4) and x.dtype == torch.float32
    assert torch.equal(x[:, :2], coordinate_maps(4).expand(2, -1, -1, -1)) and torch.equal(x[:, 2:], rgb)
    assert extra_input_maps((), 2, 4, None, "cpu") is None
    with pytest.raises(ValueError, match="reads the image's RGB"):
        extra_input_maps(("rgb",), 2, 4, None, "cpu")
    with pytest.raises(ValueError, match="2 images of 8x8"):
        extra_input_maps(("rgb",), 2, 8, stored, "cpu")
    for config in (MLPEnsembleConfig, ConvInterpreterConfig):
        assert config(extra_inputs=["rgb", "coords"]).extra_inputs == ("rgb", "coords")
        with pytest.raises(ValueError, match="extra_inputs must be distinct names"):
            config(extra_inputs=["depth"])
        with pytest.raises(ValueError, match="extra_inputs must be distinct names"):
            config(extra_inputs=["rgb", "rgb"])


# -- MLP ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp_case(tmp_path_factory):
    maps, masks, images = colour_case(8, SHAPES)
    store = write_store(tmp_path_factory.mktemp("feat") / "features.h5", maps[:4])
    data = TrainingData(store, masks[:4], 3, images=images[:4])
    ens = train_mlp_ensemble(data, dataclasses.replace(MLP, extra_inputs=("rgb", "coords")))
    return maps, masks, images, data, ens


def test_rgb_input_learns_what_uninformative_taps_cannot(mlp_case):
    maps, masks, images, data, ens = mlp_case
    taps_only = train_mlp_ensemble(data, MLP)
    held_out = slice(4, None)
    with_rgb = accuracy(ens, maps[held_out], masks[held_out], images[held_out])
    without = accuracy(taps_only, maps[held_out], masks[held_out], images[held_out])
    # measured over seeds 0-2: with rgb 1.00, the taps alone 0.31-0.32 (chance: 0.33)
    assert with_rgb > 0.95 and without < 0.6, (with_rgb, without)
    assert ens.dim == sum(c for c, _, _ in SHAPES.values()) + 5 and ens.input_dims[-1] == 5


def test_mlp_inference_reads_the_inputs_as_training_gathers_them(mlp_case):
    """Training gathers [taps, rgb, coords] per pixel; both inference paths equal every member on
    that vector of every pixel."""
    maps, _, images, _, ens = mlp_case
    x = torch.cat([upsampled(maps), extra_input_maps(ens.extra_inputs, 8, RES, torch.from_numpy(images), "cpu")], 1)
    x = x.permute(0, 2, 3, 1).reshape(-1, ens.dim)
    naive = torch.stack([m(x).softmax(1).reshape(8, RES, RES, -1).permute(0, 3, 1, 2) for m in ens.members])
    feats = with_image(maps, images)
    torch.testing.assert_close(ens.member_probabilities(feats), naive, rtol=0, atol=1e-5)
    torch.testing.assert_close(ens.member_probabilities_reference(feats), naive, rtol=0, atol=1e-5)


def test_mlp_save_load_applies_the_same_inputs(mlp_case, tmp_path):
    maps, _, images, _, ens = mlp_case
    path = tmp_path / "interp.safetensors"
    ens.save(path)
    assert json.loads((tmp_path / "interp.json").read_text())["config"]["extra_inputs"] == ["rgb", "coords"]
    loaded = INTERPRETERS.get("mlp").load(path)
    assert loaded.extra_inputs == ("rgb", "coords")
    feats = with_image(maps, images)
    assert torch.equal(loaded.member_probabilities(feats), ens.member_probabilities(feats))
    with pytest.raises(ValueError, match="reads the image's RGB"):
        loaded.member_probabilities(batch_features(maps))


def test_without_extra_inputs_nothing_changes(mlp_case):
    maps, masks, images, data, _ = mlp_case
    cfg = {"num_members": 2, "eval_every": 10, "max_batches": 30, "seed": 5}
    default = train_mlp_ensemble(data, MLPEnsembleConfig(**cfg))
    empty = train_mlp_ensemble(dataclasses.replace(data, images=None), MLPEnsembleConfig(**cfg, extra_inputs=[]))
    assert_same_state(default, empty)
    assert default.extra_inputs == () and default.input_dims == default.layer_dims
    feats = batch_features(maps)
    assert interpreter_features(default, feats, torch.from_numpy(images)) is feats  # no image handed over
    assert torch.equal(default.member_probabilities(feats), default.member_probabilities(with_image(maps, images)))
    conv = {"iterations": 3, "channels": (8, 8, 8), "num_members": 1, "seed": 2}
    conv_store = write_store(data.store.path.with_name("conv.h5"), colour_case(4, TAPS)[0])
    a = train_conv_ensemble(TrainingData(conv_store, masks[:4], 3), ConvInterpreterConfig(**conv))
    b = train_conv_ensemble(TrainingData(conv_store, masks[:4], 3, images=images[:4]),
                            ConvInterpreterConfig(**conv, extra_inputs=()))
    assert_same_state(a, b)


def test_rgb_training_needs_the_images(mlp_case):
    _, _, _, data, _ = mlp_case
    with pytest.raises(ValueError, match="rgb trains on the annotated images"):
        train_mlp_ensemble(dataclasses.replace(data, images=None), dataclasses.replace(MLP, extra_inputs=("rgb",)))
    with pytest.raises(ValueError, match="images must be uint8"):
        dataclasses.replace(data, images=data.images[:, :8])


def test_validation_and_tap_ranking_apply_the_inputs(mlp_case):
    *_, data, _ = mlp_case
    spec = ValidationSpec(folds=2, members=1)
    fast = dataclasses.replace(MLP, max_batches=150)
    with_rgb = cross_validate_interpreter(data, "mlp", dataclasses.replace(fast, extra_inputs=("rgb",)), spec)
    without = cross_validate_interpreter(data, "mlp", fast, spec)
    # measured over seeds 0-2: with rgb 0.99-1.00, without 0.18-0.21
    assert with_rgb["interpreter"]["miou"] > 0.9 and without["interpreter"]["miou"] < 0.4, (with_rgb, without)
    table = rank_taps(dataclasses.replace(data, layers=["b4.conv1", "b16.conv0"]),
                      dataclasses.replace(fast, extra_inputs=("rgb",)), folds=2)
    assert (table["miou"] > 0.9).all(), table


def test_probe_taps_adds_the_inputs_to_every_tap(mlp_case, tmp_path, capsys):
    *_, data, _ = mlp_case
    n = len(data.masks)
    AnnotationSet(ids=data.ids, seeds=np.arange(n), classes=np.full(n, -1, np.int32),
                  latents=np.zeros((n, 8), np.float32), images=data.images, masks=data.masks,
                  labels=LabelSet(("bg", "a", "b"), 255), generator_hash=data.store.generator_hash, truncation=1.0,
                  noise="const").save(tmp_path / "annotations.h5")
    args = ["probe-taps", "--features", str(data.store.path), "--annotations", str(tmp_path / "annotations.h5"),
            "--folds", "2", "--max-epochs", "3", "--device", "cpu", "--out", str(tmp_path / "taps.csv")]
    assert main([*args, "--extra-inputs", "rgb"]) == 0
    assert "extra inputs rgb with every tap" in capsys.readouterr().out
    with_rgb = pd.read_csv(tmp_path / "taps.csv")
    assert main(args) == 0
    without = pd.read_csv(tmp_path / "taps.csv")
    # measured: with rgb 0.30-1.00 by tap (3 epochs: wide noise taps slow it), without 0.10-0.14
    assert with_rgb["miou"].min() > without["miou"].max() and with_rgb["miou"].max() > 0.9, (with_rgb, without)
    assert main([*args, "--extra-inputs", "depth"]) == 1  # one line, not a traceback


# -- conv -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def conv_case(tmp_path_factory):
    maps, masks, images = colour_case(8, TAPS)
    store = write_store(tmp_path_factory.mktemp("feat") / "features.h5", maps[:4])
    data = TrainingData(store, masks[:4], 3, images=images[:4])
    ens = train_conv_ensemble(data, dataclasses.replace(CONV, extra_inputs=("rgb", "coords")))
    return maps, masks, images, data, ens


def test_conv_rgb_input_learns_what_uninformative_taps_cannot(conv_case):
    maps, masks, images, data, ens = conv_case
    held_out = slice(4, None)
    with_rgb = accuracy(ens, maps[held_out], masks[held_out], images[held_out])
    without = accuracy(train_conv_ensemble(data, CONV), maps[held_out], masks[held_out], images[held_out])
    # measured over seeds 0-2: with rgb 0.66-0.88 (150 iterations), the taps alone 0.30-0.36
    assert with_rgb > without + 0.25 and without < 0.45, (with_rgb, without)
    assert ens.members[0].reduce[-1].in_channels == TAPS["b16"][0] + 5  # the finest group reads them


def test_conv_inputs_reach_taps_coarser_than_the_labels(tmp_path):
    """With taps at most 8x8 and 16x16 labels, the finest group works at the labels' resolution."""
    coarse = {k: v for k, v in TAPS.items() if v[1] < RES}
    maps, masks, images = colour_case(6, coarse, seed=3)
    data = TrainingData(write_store(tmp_path / "f.h5", maps[:4]), masks[:4], 3, images=images[:4])
    ens = train_conv_ensemble(data, dataclasses.replace(CONV, extra_inputs=("rgb",)))
    assert ens.members[0].targets[-1] == (RES, RES)
    assert accuracy(ens, maps[4:], masks[4:], images[4:]) > 0.8  # measured over seeds 3-5: 0.86-0.91


def test_conv_save_load_applies_the_same_inputs(conv_case, tmp_path):
    maps, _, images, _, ens = conv_case
    path = tmp_path / "interp.safetensors"
    ens.save(path)
    assert json.loads((tmp_path / "interp.json").read_text())["config"]["extra_inputs"] == ["rgb", "coords"]
    loaded = INTERPRETERS.get("conv").load(path)
    feats = with_image(maps, images)
    assert torch.equal(loaded.member_probabilities(feats), ens.member_probabilities(feats))
    with pytest.raises(ValueError, match="reads the image's RGB"):
        loaded.member_probabilities(batch_features(maps))


# -- synthesis --------------------------------------------------------------------------
def test_synthesis_hands_the_generated_image_to_the_interpreter(tmp_path):
    """A shard's labels are the interpreter's on the rendered image it stores."""
    backend = tiny_generator()
    z = backend.draw_latents(range(4))
    extract_features(backend, [f"s{i:08d}" for i in range(4)], z, tmp_path / "features.h5")
    images = images_to_uint8(torch.from_numpy(backend.render(z)))
    masks = np.stack([tiny_mask(img) for img in images]).astype(np.uint8)
    data = TrainingData(FeatureStore.open(tmp_path / "features.h5"), masks, 3, images=images)
    cfg = MLPEnsembleConfig(num_members=2, eval_every=20, patience=2, max_epochs=3, extra_inputs=["rgb", "coords"])
    ens = train_mlp_ensemble(data, cfg)
    ens.save(tmp_path / "interp.safetensors")
    loaded = INTERPRETERS.get("mlp").load(tmp_path / "interp.safetensors")
    info = synthesize_shard(backend, loaded, tmp_path / "shard.h5", [7, 9, 11], None,
                            ShardSettings(batch_size=2), progress=False)
    assert info.num_samples == 3
    with h5py.File(tmp_path / "shard.h5") as f:
        stored, labels = f["images"][()], f["labels"][()]
    out = backend.synthesize(torch.from_numpy(backend.draw_latents([7, 9, 11])), None, 1.0, "const", features=True)
    probs = loaded.member_probabilities({**out.features, IMAGE: torch.from_numpy(stored)})
    np.testing.assert_array_equal(labels, vote_labels(probs).numpy())
