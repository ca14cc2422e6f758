import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelfactory.features import FeatureStoreError
from labelfactory.interpreters import INTERPRETERS, TrainingData
from labelfactory.interpreters.conv import ConvEnsemble, ConvInterpreterConfig, resolution_groups, train_conv_ensemble
from labelfactory.interpreters.conv import build_member, pixel_loss
from test_interpreter import write_store

torch.set_num_threads(1)

RES = 16
TAPS = {"b4": (4, 4, 4), "b8": (4, 8, 8), "b8.attn": (3, 8, 8), "b16": (3, 16, 16)}
SMALL = dict(channels=(8, 8, 8), num_members=2, seed=3)
BIGGAN_32 = {"b8": (16, 8, 8), "b16": (8, 16, 16), "b16.attn": (8, 16, 16), "b32": (4, 32, 32)}
BIGGAN_128 = {f"b{r}": (c, r, r) for r, c in [(8, 16), (16, 16), (32, 8), (64, 8), (128, 4)]}
STYLEGAN2_32 = {f"b{r}.conv{k}": (6, r, r) for r in (4, 8, 16, 32) for k in (0, 1)}


def synthetic(n, seed=0):
    """Native-resolution maps whose channel 0 linearly encodes a rectangle's mask
    (area-downsampled to the tap's size) under noise, and that mask."""
    rng = np.random.default_rng(seed)
    shape = np.zeros((n, RES, RES), np.uint8)
    for i in range(n):
        (y0, x0), (h, w) = rng.integers(0, 8, 2), rng.integers(5, 9, 2)
        shape[i, y0 : y0 + h, x0 : x0 + w] = 1
    signal = torch.from_numpy(shape).float()[:, None] * 2 - 1
    maps = []
    for i in range(n):
        m = {}
        for layer, (c, h, w) in TAPS.items():
            a = 0.5 * rng.standard_normal((c, h, w))
            a[0] += F.interpolate(signal[i : i + 1], size=(h, w), mode="area")[0, 0].numpy()
            m[layer] = a.astype(np.float16)
        maps.append(m)
    return maps, shape


def batch_features(maps):
    return {l: torch.as_tensor(np.stack([m[l] for m in maps])) for l in maps[0]}


def random_features(taps, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {l: torch.randn(b, *s, generator=g) for l, s in taps.items()}


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    """An ensemble trained where the object is the rectangle in class-0 images and
    everything else in class-1 images: only the class conditioning can tell them apart."""
    maps, shape = synthetic(8)
    classes = np.arange(8) % 2
    masks = np.where(classes[:, None, None] == 1, 1 - shape, shape).astype(np.uint8)
    store = write_store(tmp_path_factory.mktemp("feat") / "features.h5", maps, resolution=RES)
    emb = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    cfg = ConvInterpreterConfig(iterations=80, **SMALL)
    ens = train_conv_ensemble(TrainingData(store, masks, 2, generator_hash="gen-a", label_names=["bg", "obj"],
                                           classes=classes, class_embedding=emb), cfg)
    return maps, store, masks, classes, ens


def test_groups_follow_the_release_and_generalise():
    biggan512 = [(r, r) for r in (8, 16, 32, 64, 64, 128, 256, 512)]  # the release's 8 taps (attention at 64)
    assert resolution_groups(biggan512, 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]  # 32 / 128 / 512, as released
    assert resolution_groups(biggan512, 3, (32, 128)) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    stylegan = [s[1:] for s in STYLEGAN2_32.values()]
    assert resolution_groups(stylegan, 3) == [[0, 1, 2, 3], [4, 5], [6, 7]]
    assert resolution_groups([(8, 8), (16, 16)], 3) == [[0], [1], []]
    assert resolution_groups(stylegan, 3, (8, 9)) == [[0, 1, 2, 3], [], [4, 5, 6, 7]]
    assert resolution_groups(stylegan, 2, (16,)) == [[0, 1, 2, 3, 4, 5], [6, 7]]


@pytest.mark.parametrize("taps, res, targets", [
    (BIGGAN_32, 32, [8, 16, 32]),
    (BIGGAN_128, 128, [16, 64, 128]),
    (STYLEGAN2_32, 32, [8, 16, 32]),
    ({"b4": (6, 4, 4), "b8": (6, 8, 8)}, 32, [4, 8]),  # taps stop below the image resolution
    ({"b16": (5, 16, 16)}, 16, [16]),
])
@pytest.mark.parametrize("cond_dim", [None, 6])
def test_fusion_shapes(taps, res, targets, cond_dim):
    cfg = ConvInterpreterConfig(**SMALL)
    feats = random_features(taps)
    e = None if cond_dim is None else torch.randn(2, cond_dim)
    for classes, out_dim in [(2, 1), (4, 4)]:
        net = build_member(list(taps.values()), classes, res, cfg, cond_dim, seed=0)
        assert [t[0] for t in net.targets] == targets
        assert len(net.blocks) == max(1, len(targets) - 1)
        for mode in (net.train, net.eval):
            mode()
            assert net(list(feats.values()), e).shape == (2, out_dim, res, res)


def test_spectral_norm_as_released_or_off():
    taps = list(BIGGAN_32.values())
    sn = build_member(taps, 2, 32, ConvInterpreterConfig(**SMALL), cond_dim=6, seed=0)
    normed = [m for m in sn.modules() if hasattr(m, "parametrizations")]
    assert len(normed) == 2 * (2 + 2 * 2) + 1  # per block two 3x3 convs and two ccbn (gain, bias); the head
    sn.train()
    for _ in range(30):  # power iterations converge on the top singular value
        sn(list(random_features(BIGGAN_32).values()), torch.randn(2, 6))
    for m in normed:
        assert abs(torch.linalg.matrix_norm(m.weight.detach().flatten(1), 2) - 1) < 0.05
    plain = build_member(taps, 2, 32, ConvInterpreterConfig(spectral_norm=False, **SMALL), cond_dim=6, seed=0)
    assert not any(hasattr(m, "parametrizations") for m in plain.modules())
    assert plain(list(random_features(BIGGAN_32).values()), torch.randn(2, 6)).shape == (2, 1, 32, 32)


def test_reducing_at_native_resolution_equals_the_releases_upsample_then_reduce():
    cfg = ConvInterpreterConfig(**SMALL)
    net = build_member(list(BIGGAN_32.values()), 2, 32, cfg, seed=0)
    maps = list(random_features(BIGGAN_32).values())
    for g, layers in enumerate(net.groups):
        size = net.targets[g]
        upsampled = torch.cat([F.interpolate(maps[i], size=size, mode="bilinear", align_corners=False)
                               for i in layers], 1)
        torch.testing.assert_close(net._reduced(g, maps), net.reduce[g](upsampled), rtol=1e-5, atol=1e-5)


def test_learns_a_class_dependent_mask(conditional):
    maps, _, masks, classes, ens = conditional
    for h in ens.history:
        assert h.iterations == 80 and len(h.loss_curve) == len(h.accuracy_curve) >= 40
        assert h.loss_curve[-1] < 0.3 * h.loss_curve[0], h.loss_curve
    probs = ens.member_probabilities(batch_features(maps), torch.as_tensor(classes))
    assert probs.shape == (2, 8, 2, RES, RES)
    torch.testing.assert_close(probs.sum(2), torch.ones(2, 8, RES, RES))
    acc = ((probs.mean(0)[:, 1] > 0.5).numpy() == masks).mean()
    assert acc > 0.95, acc
    flipped = ens.member_probabilities(batch_features(maps), torch.as_tensor(1 - classes))
    assert ((flipped.mean(0)[:, 1] > 0.5).numpy() == masks).mean() < 0.5  # the class decides the label
    assert not torch.equal(probs[0], probs[1])  # members differ


def test_conditioning_errors(conditional):
    maps, store, masks, classes, ens = conditional
    feats = batch_features(maps[:2])
    with pytest.raises(ValueError, match="class-conditional: give the class"):
        ens.member_probabilities(feats)
    with pytest.raises(ValueError, match=r"need 2 classes in 0..2, got \[0, 3\]"):
        ens.member_probabilities(feats, torch.tensor([0, 3]))
    emb = ens.class_embedding
    with pytest.raises(ValueError, match="outside the embedding's 0..2"):
        train_conv_ensemble(TrainingData(store, masks, 2, classes=np.full(8, 5), class_embedding=emb))
    with pytest.raises(ValueError, match="one per annotated image"):
        train_conv_ensemble(TrainingData(store, masks, 2, classes=classes[:3], class_embedding=emb))
    with pytest.raises(ValueError, match="needs the class of every annotated image"):
        train_conv_ensemble(TrainingData(store, masks, 2, class_embedding=emb))
    with pytest.raises(ValueError, match="without the generator's class_embedding"):
        train_conv_ensemble(TrainingData(store, masks, 2, classes=classes))


def test_unconditional_ensemble_learns_and_ignores_classes(tmp_path):
    maps, shape = synthetic(6, seed=1)
    store = write_store(tmp_path / "f.h5", maps, resolution=RES)
    ens = train_conv_ensemble(TrainingData(store, shape, 2),
                              ConvInterpreterConfig(iterations=40, **{**SMALL, "num_members": 1}))
    assert ens.class_embedding is None
    feats = batch_features(maps)
    probs = ens.member_probabilities(feats)
    assert ((probs[0, :, 1] > 0.5).numpy() == shape).mean() > 0.95
    assert torch.equal(ens.member_probabilities(feats, torch.zeros(6, dtype=torch.long)), probs)


def test_save_load_round_trip(conditional, tmp_path):
    maps, _, _, classes, ens = conditional
    path = tmp_path / "interp.safetensors"
    ens.save(path)
    meta = json.loads((tmp_path / "interp.json").read_text())
    assert meta["interpreter"] == "conv" and meta["generator_hash"] == "gen-a" and meta["label_names"] == ["bg", "obj"]
    assert meta["groups"] == [["b4"], ["b8", "b8.attn"], ["b16"]] and meta["class_embedding_shape"] == [3, 6]
    assert meta["config"]["channels"] == [8, 8, 8] and len(set(meta["member_seeds"])) == 2
    assert len(meta["history"][0]["loss_curve"]) == len(ens.history[0].loss_curve)
    loaded = INTERPRETERS.get("conv").load(path)
    assert isinstance(loaded, ConvEnsemble) and not loaded.training
    torch.testing.assert_close(loaded.class_embedding, ens.class_embedding, rtol=0, atol=0)
    feats, cls = batch_features(maps), torch.as_tensor(classes)
    assert torch.equal(loaded.member_probabilities(feats, cls), ens.member_probabilities(feats, cls))
    (tmp_path / "interp.json").write_text(json.dumps({**meta, "interpreter": "mlp"}))
    with pytest.raises(ValueError, match="not a 'conv' interpreter"):
        ConvEnsemble.load(path)


def test_eval_mode_is_batch_independent(conditional):
    maps, _, _, classes, ens = conditional
    feats, cls = batch_features(maps), torch.as_tensor(classes)
    together = ens.member_probabilities(feats, cls)
    alone = torch.cat([ens.member_probabilities({l: v[i : i + 1] for l, v in feats.items()}, cls[i : i + 1])
                       for i in range(len(maps))], 1)
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-6)


def test_training_is_deterministic_and_reading_per_batch_changes_nothing(conditional):
    _, store, masks, classes, ens = conditional
    data = TrainingData(store, masks, 2, classes=classes, class_embedding=ens.class_embedding)
    runs = [train_conv_ensemble(data, ConvInterpreterConfig(iterations=3, cache_mb=mb, **SMALL)) for mb in (64, 64, 0)]
    for other in runs[1:]:
        for (k, va), vb in zip(runs[0].state_dict().items(), other.state_dict().values()):
            assert torch.equal(va, vb), k
    a, b = runs[0].members
    assert not torch.equal(a.reduce[0].weight, b.reduce[0].weight)


def test_softmax_for_more_classes_and_ignored_pixels(tmp_path):
    maps, shape = synthetic(4, seed=2)
    store = write_store(tmp_path / "f.h5", maps, resolution=RES)
    masks = shape.copy()
    masks[:, :, :4] = 2
    masks[0, :3] = 255
    ens = train_conv_ensemble(TrainingData(store, masks, 3), ConvInterpreterConfig(iterations=2, **SMALL))
    probs = ens.member_probabilities(batch_features(maps))
    assert probs.shape == (2, 4, 3, RES, RES)
    torch.testing.assert_close(probs.sum(2), torch.ones(2, 4, RES, RES))
    multi = torch.from_numpy(masks).long()
    binary = multi.clamp(max=1).masked_fill(multi == 255, 255)
    for target, channels in ((binary, 1), (multi, 3)):
        logits = torch.randn(4, channels, RES, RES)
        loss, right, n = pixel_loss(logits, target, 255)
        garbage = logits.clone()
        garbage[0, :, :3] = 1e4 * torch.randn(channels, 3, RES)  # only on ignored pixels
        assert n == (masks != 255).sum() and 0 < right < n
        again = pixel_loss(garbage, target, 255)
        assert torch.equal(again[0], loss) and again[1:] == (right, n)


def test_bad_inputs_are_refused(conditional, tmp_path):
    maps, store, masks, _, _ = conditional
    with pytest.raises(FeatureStoreError, match="generator gen-a .* generator gen-b"):
        train_conv_ensemble(TrainingData(store, masks, 2, generator_hash="gen-b"))
    with pytest.raises(FeatureStoreError, match="resolution mismatch"):
        train_conv_ensemble(TrainingData(store, np.zeros((8, 8, 8), np.uint8), 2))
    with pytest.raises(ValueError, match=r"mask values \[2\]"):
        train_conv_ensemble(TrainingData(store, np.where(masks == 1, 2, masks).astype(np.uint8), 2))
    with pytest.raises(ValueError, match=r"unknown feature layers \['b32'\]"):
        train_conv_ensemble(TrainingData(store, masks, 2, layers=["b32"]))
    with pytest.raises(ValueError, match="nothing to train on"):
        train_conv_ensemble(TrainingData(store, np.full_like(masks, 255), 2))
    with pytest.raises(ValueError, match=r"iterations=0, lr=0.*channels=\[\].*cache_mb=-1"):
        ConvInterpreterConfig(iterations=0, lr=0, channels=(), cache_mb=-1)
    with pytest.raises(ValueError, match=r"group_bounds=\[32\] \(need 2 increasing"):
        ConvInterpreterConfig(group_bounds=(32,))


def test_inference_refuses_missing_or_misshapen_layers(conditional):
    maps, _, _, classes, ens = conditional
    feats, cls = batch_features(maps[:2]), torch.as_tensor(classes[:2])
    with pytest.raises(KeyError, match="b8.attn"):
        ens.member_probabilities({l: v for l, v in feats.items() if l != "b8.attn"}, cls)
    with pytest.raises(ValueError, match=r"layer b16: expected \[B, 3, 16, 16\]"):
        ens.member_probabilities({**feats, "b16": feats["b16"][:, :, :8]}, cls)


def test_bfloat16_inference_keeps_the_labels(conditional):
    maps, _, _, classes, ens = conditional
    feats, cls = batch_features(maps), torch.as_tensor(classes)
    exact = ens.member_probabilities(feats, cls)
    ens.compute_dtype = torch.bfloat16
    try:
        half = ens.member_probabilities(feats, cls)
    finally:
        ens.compute_dtype = torch.float32
    assert half.dtype == torch.float32 and (half - exact).abs().max() < 0.05
    assert (half.argmax(2) == exact.argmax(2)).float().mean() > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (mixed precision)")
def test_mixed_precision_training_on_cuda(conditional):
    maps, store, masks, classes, ens = conditional
    cuda = train_conv_ensemble(TrainingData(store, masks, 2, classes=classes, class_embedding=ens.class_embedding),
                               ConvInterpreterConfig(iterations=80, **SMALL), device="cuda")
    probs = cuda.member_probabilities(batch_features(maps), torch.as_tensor(classes)).cpu()
    assert probs.dtype == torch.float32 and ((probs.mean(0)[:, 1] > 0.5).numpy() == masks).mean() > 0.95
