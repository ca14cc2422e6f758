"""Per-channel standardisation of the taps (``interpreter.normalize``), for the MLP and conv interpreters."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from test_conv_interpreter import SMALL, synthetic
from test_fast_labelling import CASES
from test_fast_labelling import ensemble as untrained_ensemble
from test_fast_labelling import features as random_features
from test_interpreter import (
    NAMES,
    batch_features,
    linear_labels,
    random_maps,
    upsampled,
    write_store,
)

from labelfactory.interpreters import INTERPRETERS, TrainingData
from labelfactory.interpreters.conv import ConvInterpreterConfig, train_conv_ensemble
from labelfactory.interpreters.mlp import MLPEnsemble, MLPEnsembleConfig, train_mlp_ensemble
from labelfactory.interpreters.base import channel_statistics, standardise_maps
from labelfactory.synthesis.uncertainty import mean_labels

torch.set_num_threads(1)

SCALED = "b8.conv0"  # the tap given a scale and offset far from the others'


def rescaled(maps, layer=SCALED, scale=1e3, offset=5e3):
    """``maps`` with one tap's values ``scale · x + offset`` (as the store keeps them, float16)."""
    return [{l: (a.astype(np.float32) * scale + offset).astype(np.float16) if l == layer else a
             for l, a in m.items()} for m in maps]


def native_statistics(maps):
    """Every channel's float64 mean and std over the native maps of all images, tap after tap."""
    x = [np.stack([m[l] for m in maps]).astype(np.float64) for l in maps[0]]
    return (np.concatenate([a.mean((0, 2, 3)) for a in x]), np.concatenate([a.std((0, 2, 3)) for a in x]))


def assert_same_state(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        if k not in skip:
            assert torch.equal(sa[k], sb[k]), k


# -- the statistics ----------------------------------------------------------------
def test_channel_statistics_combine_images_in_float64():
    rng = np.random.default_rng(0)
    images = [[rng.standard_normal((3, 20)) * [[1], [1e-3], [0]] + [[0], [1e6], [7]],  # a constant channel
               rng.standard_normal((2, 5)) * 10]
              for _ in range(4)]
    mean, std = channel_statistics([[torch.as_tensor(x) for x in img] for img in images], floor=1e-6)
    assert mean.dtype == std.dtype == torch.float32
    whole = [np.concatenate([img[k] for img in images], 1) for k in range(2)]
    np.testing.assert_allclose(mean.numpy(), np.concatenate([w.mean(1) for w in whole]), rtol=1e-6)
    expected_std = np.maximum(np.concatenate([w.std(1) for w in whole]), 1e-6)
    np.testing.assert_allclose(std.numpy(), expected_std, rtol=1e-5)  # 1e-3 spread on a 1e6 offset included
    assert std[2] == np.float32(1e-6) and mean[2] == 7  # floored; the constant maps to 0
    maps = [torch.full((2, 3, 4, 4), 7.0), torch.ones(2, 2, 1, 1)]
    out = standardise_maps(maps, torch.tensor([7.0, 7.0, 7.0, 0.0, 1.0]), torch.tensor([1e-6, 1, 2, 0.5, 4]))
    assert torch.equal(out[0], torch.zeros(2, 3, 4, 4)) and torch.equal(out[1][0, :, 0, 0], torch.tensor([2.0, 0.0]))


# -- MLP ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp_case(tmp_path_factory):
    """Four annotated and four held-out images whose labels are linear in the features, the annotated
    ones stored raw and with one tap rescaled, and a normalised ensemble trained on the rescaled ones."""
    maps = random_maps(8)
    masks = linear_labels(maps)
    tmp = tmp_path_factory.mktemp("feat")
    raw, scaled = write_store(tmp / "raw.h5", maps[:4]), write_store(tmp / "scaled.h5", rescaled(maps)[:4])
    cfg = MLPEnsembleConfig(num_members=2, eval_every=50, patience=100, max_batches=300, seed=0, normalize=True)
    ens = train_mlp_ensemble(TrainingData(scaled, masks[:4], len(NAMES), label_names=NAMES), cfg)
    return maps, masks, raw, scaled, cfg, ens


def held_out_accuracy(ens, maps, masks):
    return float((mean_labels(ens.member_probabilities(batch_features(maps[4:]))).numpy() == masks[4:]).mean())


def test_a_rescaled_tap_is_learned_once_normalised(mlp_case):
    maps, masks, raw, scaled, cfg, ens = mlp_case
    plain = dataclasses.replace(cfg, normalize=False)
    reference = held_out_accuracy(train_mlp_ensemble(TrainingData(raw, masks[:4], 3), plain), maps, masks)
    normalised = held_out_accuracy(ens, rescaled(maps), masks)
    unnormalised = held_out_accuracy(train_mlp_ensemble(TrainingData(scaled, masks[:4], 3), plain),
                                     rescaled(maps), masks)
    # measured over seeds 0-8: reference 0.89-0.94, normalised within 0.01 of it, unnormalised 0.45-0.61
    assert reference > 0.85 and abs(normalised - reference) < 0.03, (reference, normalised)
    assert unnormalised < normalised - 0.15, (unnormalised, normalised)


def test_the_statistics_are_the_annotated_taps_at_native_resolution(mlp_case):
    maps, *_, ens = mlp_case
    mean, std = native_statistics(rescaled(maps[:4]))
    np.testing.assert_allclose(ens.tap_mean.numpy(), mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ens.tap_std.numpy(), std, rtol=1e-5)
    assert 900 < ens.tap_std[6:11].min() and ens.tap_mean[6:11].min() > 4900  # the rescaled tap's 5 channels


def test_training_and_inference_standardise_alike(mlp_case, tmp_path):
    """Scaling a tap by a power of two changes nothing once normalised (the standardised features
    are bit-identical), so training and inference both standardise; and inference equals the naive
    path on standardised upsampled features."""
    maps, masks, raw, _, cfg, _ = mlp_case
    cfg = dataclasses.replace(cfg, max_batches=60)
    fours = rescaled(maps, scale=4, offset=0)
    a = train_mlp_ensemble(TrainingData(raw, masks[:4], 3), cfg)
    b = train_mlp_ensemble(TrainingData(write_store(tmp_path / "fours.h5", fours[:4]), masks[:4], 3), cfg)
    assert_same_state(a, b, skip=("tap_mean", "tap_std"))
    assert torch.equal(b.tap_std[6:11], 4 * a.tap_std[6:11])
    assert torch.equal(a.member_probabilities(batch_features(maps)), b.member_probabilities(batch_features(fours)))
    x = (upsampled(maps) - a.tap_mean[:, None, None]) / a.tap_std[:, None, None]
    x = x.permute(0, 2, 3, 1).reshape(-1, a.dim)
    naive = torch.stack([m(x).softmax(1).reshape(8, 16, 16, -1).permute(0, 3, 1, 2) for m in a.members])
    torch.testing.assert_close(a.member_probabilities(batch_features(maps)), naive, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", ["odd scales", "no full-resolution map"])
def test_fast_path_equals_reference_when_normalised(case, mlp_case):
    resolution, shapes = CASES[case]
    plain = untrained_ensemble(shapes, resolution)
    gen = torch.Generator().manual_seed(2)
    mean, std = torch.randn(plain.dim, generator=gen) * 10, torch.rand(plain.dim, generator=gen) * 50 + 0.5
    ens = MLPEnsemble(list(plain.members), dataclasses.replace(plain.cfg, normalize=True), plain.layers,
                      plain.layer_dims, plain.num_classes, resolution, "gen", plain.history, None, mean, std)
    feats = {l: (x * s[:, None, None] + m[:, None, None])
             for (l, x), m, s in zip(random_features(shapes).items(), mean.split(plain.layer_dims),
                                     std.split(plain.layer_dims))}
    fast, ref = ens.member_probabilities(feats), ens.member_probabilities_reference(feats)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast, plain.member_probabilities(random_features(shapes)), rtol=0, atol=1e-4)
    _, _, _, _, _, trained = mlp_case
    feats = batch_features(rescaled(mlp_case[0]))
    torch.testing.assert_close(trained.member_probabilities(feats), trained.member_probabilities_reference(feats),
                               rtol=0, atol=1e-5)


def test_mlp_save_load_round_trip(mlp_case, tmp_path):
    maps, *_, ens = mlp_case
    path = tmp_path / "interp.safetensors"
    ens.save(path)
    assert json.loads((tmp_path / "interp.json").read_text())["config"]["normalize"] is True
    loaded = INTERPRETERS.get("mlp").load(path)
    assert torch.equal(loaded.tap_mean, ens.tap_mean) and torch.equal(loaded.tap_std, ens.tap_std)
    feats = batch_features(rescaled(maps))
    assert torch.equal(loaded.member_probabilities(feats), ens.member_probabilities(feats))


def test_mlp_without_normalize_is_unchanged(mlp_case):
    _, masks, raw, *_ = mlp_case
    cfg = {"num_members": 2, "eval_every": 10, "max_batches": 30, "seed": 5}
    default = train_mlp_ensemble(TrainingData(raw, masks[:4], 3), MLPEnsembleConfig(**cfg))
    off = train_mlp_ensemble(TrainingData(raw, masks[:4], 3), MLPEnsembleConfig(**cfg, normalize=False))
    assert default.tap_mean is None and default.tap_std is None
    assert not any(k.startswith("tap_") for k in default.state_dict())
    assert_same_state(default, off)
    with pytest.raises(ValueError, match="normalize is off"):
        MLPEnsemble(list(default.members), default.cfg, default.layers, default.layer_dims, 3, 16, "gen",
                    default.history, None, torch.zeros(default.dim), torch.ones(default.dim))
    with pytest.raises(ValueError, match="normalize needs"):
        MLPEnsemble(list(default.members), dataclasses.replace(default.cfg, normalize=True), default.layers,
                    default.layer_dims, 3, 16, "gen", default.history)


# -- conv --------------------------------------------------------------------------
CONV_SCALED = "b8"


@pytest.fixture(scope="module")
def conv_case(tmp_path_factory):
    maps, shape = synthetic(10, seed=0)
    tmp = tmp_path_factory.mktemp("feat")
    raw = write_store(tmp / "raw.h5", maps[:6])
    scaled = write_store(tmp / "scaled.h5", rescaled(maps, CONV_SCALED)[:6])
    cfg = ConvInterpreterConfig(iterations=40, normalize=True, **{**SMALL, "num_members": 1, "seed": 0})
    ens = train_conv_ensemble(TrainingData(scaled, shape[:6], 2), cfg)
    return maps, shape, raw, scaled, cfg, ens


def conv_accuracy(ens, maps, shape):
    return float(((ens.member_probabilities(batch_features(maps[6:]))[0, :, 1] > 0.5).numpy() == shape[6:]).mean())


def test_conv_learns_a_rescaled_tap_once_normalised(conv_case):
    maps, shape, raw, _, cfg, ens = conv_case
    reference = conv_accuracy(train_conv_ensemble(TrainingData(raw, shape[:6], 2),
                                                  dataclasses.replace(cfg, normalize=False)), maps, shape)
    normalised = conv_accuracy(ens, rescaled(maps, CONV_SCALED), shape)
    # measured over seeds 0-3: reference 0.98-0.99, normalised within 0.015 (the unnormalised conv
    # copes with this rescaling too: its batch norms follow the reductions)
    assert reference > 0.95 and abs(normalised - reference) < 0.03, (reference, normalised)
    mean, std = native_statistics(rescaled(maps, CONV_SCALED)[:6])
    np.testing.assert_allclose(ens.tap_mean.numpy(), mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ens.tap_std.numpy(), std, rtol=1e-5)


def test_conv_training_and_inference_standardise_alike(conv_case, tmp_path):
    """As for the MLP: a tap scaled by a power of two trains and labels bit-identically once
    normalised, whether the features are cached or read per batch."""
    maps, shape, raw, _, cfg, _ = conv_case
    cfg = dataclasses.replace(cfg, iterations=5)
    fours = rescaled(maps, CONV_SCALED, scale=4, offset=0)
    four_store = write_store(tmp_path / "fours.h5", fours[:6])
    a = train_conv_ensemble(TrainingData(raw, shape[:6], 2), cfg)
    for cache_mb in (2048, 0):
        b = train_conv_ensemble(TrainingData(four_store, shape[:6], 2), dataclasses.replace(cfg, cache_mb=cache_mb))
        assert_same_state(a, b, skip=("tap_mean", "tap_std"))
        assert torch.equal(a.member_probabilities(batch_features(maps)),
                           b.member_probabilities(batch_features(fours)))


def test_conv_save_load_round_trip(conv_case, tmp_path):
    maps, *_, ens = conv_case
    path = tmp_path / "interp.safetensors"
    ens.save(path)
    assert json.loads((tmp_path / "interp.json").read_text())["config"]["normalize"] is True
    loaded = INTERPRETERS.get("conv").load(path)
    assert torch.equal(loaded.tap_mean, ens.tap_mean) and torch.equal(loaded.tap_std, ens.tap_std)
    feats = batch_features(rescaled(maps, CONV_SCALED))
    assert torch.equal(loaded.member_probabilities(feats), ens.member_probabilities(feats))


def test_conv_without_normalize_is_unchanged(conv_case):
    _, shape, raw, *_ = conv_case
    cfg = {"iterations": 3, **SMALL}
    default = train_conv_ensemble(TrainingData(raw, shape[:6], 2), ConvInterpreterConfig(**cfg))
    off = train_conv_ensemble(TrainingData(raw, shape[:6], 2), ConvInterpreterConfig(**cfg, normalize=False))
    assert default.tap_mean is None and not any(k.startswith("tap_") for k in default.state_dict())
    assert_same_state(default, off)
