import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelfactory.features import FeatureStore, FeatureStoreError
from labelfactory.interpreters import INTERPRETERS, TrainingData
from labelfactory.interpreters.mlp import MLPEnsemble, MLPEnsembleConfig, PixelFeatures, train_mlp_ensemble
from labelfactory.synthesis.uncertainty import mean_labels

torch.set_num_threads(1)

RES = 16
SHAPES = {"b4.conv1": (6, 4, 4), "b8.conv0": (5, 8, 8), "b8.conv1": (4, 8, 8), "b16.conv0": (3, 16, 16)}
NAMES = ["bg", "a", "b"]


def random_maps(n, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return [{l: rng.standard_normal(s).astype(np.float16) for l, s in shapes.items()} for _ in range(n)]


def write_store(path, maps, generator_hash="gen-a", resolution=RES):
    """A feature file in the layout :func:`labelfactory.features.extract_features` writes."""
    ids = [f"s{i:08d}" for i in range(len(maps))]
    with h5py.File(path, "w") as f:
        f.attrs.update(format_version=1, generator_hash=generator_hash, layers=json.dumps(list(maps[0])),
                       shapes=json.dumps({l: list(a.shape) for l, a in maps[0].items()}), resolution=resolution,
                       truncation=1.0, noise="const", ids=json.dumps(ids))
        for i, m in zip(ids, maps):
            for l, a in m.items():
                f.create_dataset(f"{i}/{l}", data=a)
    return FeatureStore.open(path)


def upsampled(maps, size=RES, align_corners=False):
    """The naive path: every layer upsampled to ``size`` and concatenated, ``[B, D, size, size]``."""
    return torch.cat([F.interpolate(torch.as_tensor(np.stack([m[l] for m in maps])).float(), size=(size, size),
                                    mode="bilinear", align_corners=align_corners) for l in maps[0]], 1)


def linear_labels(maps, seed=1):
    """Masks whose class is the argmax of a fixed linear function of the upsampled features."""
    x = upsampled(maps)
    w = torch.randn(len(NAMES), x.shape[1], generator=torch.Generator().manual_seed(seed))
    return torch.einsum("cd,bdhw->bchw", w, x).argmax(1).numpy().astype(np.uint8)


def batch_features(maps):
    return {l: torch.as_tensor(np.stack([m[l] for m in maps])) for l in maps[0]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    maps = random_maps(4)
    store = write_store(tmp_path_factory.mktemp("feat") / "features.h5", maps)
    masks = linear_labels(maps)
    cfg = MLPEnsembleConfig(num_members=3, eval_every=50, patience=100, max_batches=200, seed=3)
    ens = train_mlp_ensemble(TrainingData(store, masks, len(NAMES), generator_hash="gen-a", label_names=NAMES), cfg)
    return maps, store, masks, ens


def test_overfits_a_separable_case(trained):
    maps, _, masks, ens = trained
    probs = ens.member_probabilities(batch_features(maps))
    assert probs.shape == (3, 4, 3, RES, RES)
    torch.testing.assert_close(probs.sum(2), torch.ones(3, 4, RES, RES))
    acc = (mean_labels(probs).numpy() == masks).mean()
    assert acc > 0.95, acc
    assert all(h.stop_reason == "max_batches" and h.batches == 200 for h in ens.history)


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_gather_equals_interpolate(align_corners):
    shapes = {**SHAPES, "wide": (2, 4, 8), "same": (3, 16, 16)}
    maps = random_maps(3, shapes, seed=5)
    feats = PixelFeatures(shapes, 3, RES, align_corners)
    for i, m in enumerate(maps):
        feats.put(i, m)
    assert [g.layers for g in feats.groups] == [["b4.conv1"], ["b8.conv0", "b8.conv1"], ["b16.conv0"], ["wide"],
                                                ["same"]]
    pix = torch.randint(0, 3 * RES * RES, (500,), generator=torch.Generator().manual_seed(0))
    want = upsampled(maps, align_corners=align_corners).permute(0, 2, 3, 1).reshape(-1, feats.dim)[pix]
    torch.testing.assert_close(feats(pix), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="expected shape"):
        feats.put(0, {**maps[0], "wide": maps[0]["same"]})


def test_native_resolution_inference_equals_naive_path(trained):
    maps, _, _, ens = trained
    x = upsampled(maps).permute(0, 2, 3, 1).reshape(-1, ens.dim)
    naive = torch.stack([m(x).softmax(1).reshape(4, RES, RES, -1).permute(0, 3, 1, 2) for m in ens.members])
    torch.testing.assert_close(ens.member_probabilities(batch_features(maps)), naive, rtol=0, atol=1e-5)
    with pytest.raises(KeyError, match="b16.conv0"):
        ens.member_probabilities({l: v for l, v in batch_features(maps).items() if l != "b16.conv0"})


def test_save_load_round_trip(trained, tmp_path):
    maps, _, _, ens = trained
    path = tmp_path / "interp.safetensors"
    ens.save(path)
    meta = json.loads((tmp_path / "interp.json").read_text())
    assert meta["label_names"] == NAMES and meta["generator_hash"] == "gen-a" and meta["resolution"] == RES
    assert meta["layers"] == list(SHAPES) and meta["layer_dims"] == [6, 5, 4, 3] and meta["config"]["seed"] == 3
    assert len(set(meta["member_seeds"])) == 3 and meta["history"][0]["stop_reason"] == "max_batches"
    loaded = MLPEnsemble.load(path)
    feats = batch_features(maps)
    assert torch.equal(loaded.member_probabilities(feats), ens.member_probabilities(feats))
    assert INTERPRETERS.get("mlp") is MLPEnsemble


def test_members_differ_but_training_is_deterministic(trained):
    _, store, masks, _ = trained
    cfg = MLPEnsembleConfig(num_members=2, eval_every=10, max_batches=20, seed=7)
    a, b = (train_mlp_ensemble(TrainingData(store, masks, 3), cfg) for _ in range(2))
    for ma, mb in zip(a.members, b.members):
        for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
            assert torch.equal(va, vb), k
    assert not torch.equal(a.members[0][0].weight, a.members[1][0].weight)
    assert a.history[0].seed != a.history[1].seed
    other = train_mlp_ensemble(TrainingData(store, masks, 3),
                               MLPEnsembleConfig(num_members=1, eval_every=10, max_batches=20))
    assert not torch.equal(other.members[0][0].weight, a.members[0][0].weight)


def test_early_stopping_stops_and_keeps_the_best_state(tmp_path):
    maps = random_maps(2, seed=2)
    store = write_store(tmp_path / "f.h5", maps)
    noise = np.random.default_rng(0).integers(0, 3, (2, RES, RES)).astype(np.uint8)  # nothing to learn
    cfg = MLPEnsembleConfig(num_members=1, lr=1e-2, eval_every=2, patience=3, max_batches=5000)
    ens = train_mlp_ensemble(TrainingData(store, noise, 3), cfg)
    h = ens.history[0]
    assert h.stop_reason == "early_stopping" and h.batches < 5000
    assert h.batches == h.best_batch + cfg.patience * cfg.eval_every


def test_ignored_pixels_are_not_trained_on(tmp_path):
    maps = random_maps(2, seed=4)
    store = write_store(tmp_path / "f.h5", maps)
    masks = linear_labels(maps)
    masks[0, :, :10] = 255
    masks[1, 3:7] = 255
    cfg = MLPEnsembleConfig(num_members=1, eval_every=5, max_batches=5)
    ens = train_mlp_ensemble(TrainingData(store, masks, 3, layers=["b16.conv0", "b4.conv1"]), cfg)
    assert ens.layers == ["b4.conv1", "b16.conv0"] and ens.layer_dims == [6, 3]  # the store's order
    h = ens.history[0]
    assert h.train_pixels + h.holdout_pixels == (masks != 255).sum()
    masks[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"mask values \[7\]"):
        train_mlp_ensemble(TrainingData(store, masks, 3))


def test_features_of_another_generator_or_resolution_are_refused(tmp_path):
    maps = random_maps(2)
    store = write_store(tmp_path / "f.h5", maps)
    masks = linear_labels(maps)
    with pytest.raises(FeatureStoreError, match="generator gen-a .* generator gen-b"):
        train_mlp_ensemble(TrainingData(store, masks, 3, generator_hash="gen-b"))
    with pytest.raises(FeatureStoreError, match="resolution mismatch: features are for 16x16 .* masks are 32x32"):
        train_mlp_ensemble(TrainingData(store, np.zeros((2, 32, 32), np.uint8), 3))
    with pytest.raises(FeatureStoreError, match="no features for annotated images"):
        train_mlp_ensemble(TrainingData(store, masks, 3, ids=["s00000000", "nope"]))
    with pytest.raises(ValueError, match=r"unknown feature layers \['b32.conv0'\]"):
        train_mlp_ensemble(TrainingData(store, masks, 3, layers=["b32.conv0"]))
    with pytest.raises(ValueError, match="batch_size=1"):
        MLPEnsembleConfig(batch_size=1)


def test_training_data_defaults_and_from_annotations(tmp_path):
    from types import SimpleNamespace

    maps = random_maps(3, seed=5)
    store = write_store(tmp_path / "f.h5", maps)
    masks = linear_labels(maps)
    data = TrainingData(store, masks.tolist(), 3, layers=["b16.conv0", "b4.conv1"])
    assert data.ids == store.ids and data.layers == ["b4.conv1", "b16.conv0"]  # store order
    assert isinstance(data.masks, np.ndarray) and np.array_equal(data.masks, masks)
    assert TrainingData(store, masks, 3).layers == list(SHAPES)
    ann = SimpleNamespace(masks=masks[::-1], labels=SimpleNamespace(names=("bg", "a", "b"), ignore_index=255),
                          ids=store.ids[::-1], generator_hash="gen-a", classes=np.array([4, 2, 0], np.int32),
                          images=np.zeros((*masks.shape, 3), np.uint8))
    plain = TrainingData.from_annotations(store, ann)
    assert plain.ids == store.ids[::-1] and plain.masks is ann.masks and plain.num_classes == 3
    assert plain.images is ann.images  # what the rgb extra input reads
    assert plain.label_names == ["bg", "a", "b"] and plain.generator_hash == "gen-a"
    assert plain.classes is None and plain.class_embedding is None  # nothing to condition on
    emb = torch.zeros(5, 2)
    conditional = TrainingData.from_annotations(store, ann, class_embedding=emb)
    assert conditional.classes is ann.classes and conditional.class_embedding is emb
    with pytest.raises(FeatureStoreError, match="generator gen-a .* generator gen-b"):
        TrainingData.from_annotations(store, SimpleNamespace(**{**vars(ann), "generator_hash": "gen-b"}))
    with pytest.raises(ValueError, match="3 masks but 2 image ids"):
        TrainingData(store, masks, 3, ids=store.ids[:2])


def test_class_weights_let_small_classes_count():
    from labelfactory.core.metrics import class_weights

    labels = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    assert class_weights(labels, 4, 0.0) is None  # the release's unweighted loss
    w = class_weights(labels, 4, 1.0)
    freq = torch.tensor([0.9, 0.09, 0.01, 0.0])
    assert torch.allclose((freq * w).sum(), torch.tensor(1.0))  # mean weight per pixel 1
    assert torch.allclose(w[:3] * freq[:3], (w[:3] * freq[:3])[0].expand(3))  # every class weighs as much
    assert w[3] == 0  # absent from the annotations
    half = class_weights(labels, 4, 0.5)
    assert w[2] > half[2] > 1 > half[0] > w[0]


def test_class_balance_raises_the_recall_of_a_rare_class():
    from labelfactory.interpreters.mlp import fit_members

    gen = torch.Generator().manual_seed(0)
    n = 4000
    x = torch.randn(n, 4, generator=gen)
    y = torch.zeros(n, dtype=torch.uint8)
    y[x[:, 0] + 0.6 * torch.randn(n, generator=gen) > 2.0] = 1  # rare (~4 %) and noisy
    rare = torch.nonzero(y == 1).squeeze(1)

    def recall(balance):
        cfg = MLPEnsembleConfig(num_members=1, batch_size=64, eval_every=20, patience=5, max_epochs=20,
                                holdout_pixels=400, class_balance=balance)
        (net,), _ = fit_members(lambda p: x[p], 4, y, torch.arange(n), 2, cfg)
        with torch.no_grad():
            return (net(x[rare]).argmax(1) == 1).float().mean().item()

    assert recall(1.0) > recall(0.0) + 0.1
