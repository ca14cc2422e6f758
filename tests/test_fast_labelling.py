"""The fused, tiled inference path of the MLP ensemble against the per-member reference path."""

import pytest
import torch
from torch import nn

from labelfactory.interpreters.mlp import (
    _DENSE_COLUMNS, _TILE_PIXELS, MemberHistory, MLPEnsemble, MLPEnsembleConfig, build_member, stack_members)
from labelfactory.interpreters import load_interpreter
from labelfactory.synthesis.uncertainty import image_scores, js_divergence, vote_labels

CLASSES = 6

# (resolution, {layer: (C, h, w)}): with and without full-resolution maps, same-size maps apart,
# maps narrow (dense column matmul) and wide (F.interpolate), non-integer scales, rows not a
# multiple of the tile height
CASES = {
    "stylegan-like": (64, {"b4": (16, 4, 4), "b8.0": (12, 8, 8), "b8.1": (12, 8, 8), "b16": (8, 16, 16),
                           "b32": (8, 32, 32), "b64.0": (6, 64, 64), "b64.1": (6, 64, 64)}),
    "no full-resolution map": (128, {"a": (10, 4, 4), "b": (8, 64, 64), "c": (6, 32, 32)}),
    "same sizes apart": (48, {"a": (7, 12, 12), "b": (5, 48, 48), "c": (9, 12, 12), "d": (4, 6, 6)}),
    "odd scales": (100, {"a": (6, 3, 3), "b": (5, 40, 40), "c": (4, 100, 100), "d": (3, 7, 50)}),
}


def ensemble(shapes, resolution, members=3, align_corners=False, seed=0):
    """An untrained ensemble with random weights and BatchNorm statistics (so that folding them matters)."""
    dims = [c for c, _, _ in shapes.values()]
    gen = torch.Generator().manual_seed(seed)
    nets = [build_member(sum(dims), CLASSES, gen) for _ in range(members)]
    for net in nets:
        for bn in net[2::3]:
            bn.running_mean.normal_(0, 0.5, generator=gen)
            bn.running_var.uniform_(0.3, 3.0, generator=gen)
            bn.weight.data.uniform_(0.5, 2.0, generator=gen)
            bn.bias.data.normal_(0, 0.5, generator=gen)
        for lin in net[::3]:
            lin.weight.data.mul_(10)  # confident members: probabilities far from uniform
    cfg = MLPEnsembleConfig(num_members=members, align_corners=align_corners)
    return MLPEnsemble(nets, cfg, list(shapes), dims, CLASSES, resolution, "gen",
                       [MemberHistory(seed=i, train_pixels=0, holdout_pixels=0) for i in range(members)])


def features(shapes, batch=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {l: torch.randn(batch, *s, generator=gen).relu() for l, s in shapes.items()}


def assert_same_labels(fast, ref, margin=1e-4):
    """Argmax labels agree wherever the reference's top two probabilities are not tied within ``margin``."""
    top2 = ref.topk(2, dim=2).values
    decided = (top2[:, :, 0] - top2[:, :, 1]) > margin
    assert decided.float().mean() > 0.9
    assert torch.equal(fast.argmax(2)[decided], ref.argmax(2)[decided])


def test_cases_cover_both_upsampling_methods_and_partial_tiles():
    widths = {w for r, shapes in CASES.values() for _, _, w in shapes.values() if w < r}
    assert min(widths) <= _DENSE_COLUMNS < max(widths)
    assert any(r % max(1, _TILE_PIXELS // r) for r, _ in CASES.values())


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_fast_path_equals_reference(case, align_corners):
    resolution, shapes = CASES[case]
    ens, feats = ensemble(shapes, resolution, align_corners=align_corners), features(shapes)
    fast, ref = ens.member_probabilities(feats), ens.member_probabilities_reference(feats)
    assert fast.shape == ref.shape == (3, 2, CLASSES, resolution, resolution)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    assert_same_labels(fast, ref)
    torch.testing.assert_close(image_scores(js_divergence(fast, 2)), image_scores(js_divergence(ref, 2)),
                               rtol=1e-4, atol=1e-5)
    agree = vote_labels(fast) == vote_labels(ref)
    assert agree.float().mean() > 0.999


def test_a_layer_subset_and_one_image():
    resolution, shapes = CASES["stylegan-like"]
    subset = {l: shapes[l] for l in ("b8.1", "b32", "b64.0")}
    ens, feats = ensemble(subset, resolution, members=2, seed=3), features(shapes, batch=1)
    torch.testing.assert_close(ens.member_probabilities(feats), ens.member_probabilities_reference(feats),
                               rtol=0, atol=1e-5)


def test_members_in_training_mode_are_evaluated_in_eval_mode():
    resolution, shapes = CASES["same sizes apart"]
    ens, feats = ensemble(shapes, resolution), features(shapes)
    ens.train()
    fast = ens.member_probabilities(feats)
    assert not ens.training
    torch.testing.assert_close(fast, ens.member_probabilities_reference(feats), rtol=0, atol=1e-5)


def test_stacked_members_fold_batchnorm_exactly():
    ens = ensemble({"a": (5, 4, 4)}, 8)
    weight, bias, layers = stack_members(ens.members)
    x = torch.randn(7, 5)
    h = (x @ weight.T + bias).relu().view(7, 3, -1).permute(1, 2, 0)  # [M, w1, pixels]
    for i, (w, b) in enumerate(layers):
        h = torch.baddbmm(b, w, h)
        h = h.relu() if i < len(layers) - 1 else h
    ens.eval()
    want = torch.stack([net(x) for net in ens.members])  # [M, pixels, classes]
    torch.testing.assert_close(h.transpose(1, 2), want, rtol=1e-5, atol=1e-5)


def test_other_member_architectures_are_refused():
    ens = ensemble({"a": (5, 4, 4)}, 8)
    ens.members[1] = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, CLASSES))
    with pytest.raises(ValueError, match="Linear, ReLU, BatchNorm1d"):
        ens.member_probabilities(features({"a": (5, 4, 4)}))


def test_bfloat16_matmuls_stay_close_to_float32():
    resolution, shapes = CASES["stylegan-like"]
    ens, feats = ensemble(shapes, resolution), features(shapes)
    ref = ens.member_probabilities(feats)
    ens.compute_dtype = torch.bfloat16
    half = ens.member_probabilities(feats)
    assert half.dtype == torch.float32
    assert (half - ref).abs().mean() < 5e-3
    assert (half.argmax(2) == ref.argmax(2)).float().mean() > 0.97
    assert (vote_labels(half) == vote_labels(ref)).float().mean() > 0.97


def test_the_configured_precision_is_set_when_loading(tmp_path):
    resolution, shapes = CASES["stylegan-like"]
    ens, feats = ensemble(shapes, resolution), features(shapes)
    ens.save(tmp_path / "interpreter.safetensors")
    exact = load_interpreter("mlp", tmp_path / "interpreter.safetensors")
    half = load_interpreter("mlp", tmp_path / "interpreter.safetensors", precision="bfloat16")
    assert (exact.compute_dtype, half.compute_dtype) == (torch.float32, torch.bfloat16)
    torch.testing.assert_close(exact.member_probabilities(feats), ens.member_probabilities(feats), rtol=0, atol=0)
    assert (half.member_probabilities(feats).argmax(2) == ens.member_probabilities(feats).argmax(2)).float().mean() > 0.97
    with pytest.raises(ValueError, match="precision must be one of"):
        load_interpreter("mlp", tmp_path / "interpreter.safetensors", precision="int8")
