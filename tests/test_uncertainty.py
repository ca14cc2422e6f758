import math

import pytest
import torch

from labelfactory.synthesis.uncertainty import image_scores, js_divergence, mean_labels, vote_labels

torch.set_num_threads(1)


def _random_probs(*shape, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).mul(3).softmax(dim)


def test_js_matches_the_direct_formula():
    p = _random_probs(5, 2, 4, 3, 3, dim=2)
    js = js_divergence(p, dim=2)
    mean = p.mean(0)
    direct = -(mean * mean.log()).sum(1) + (p * p.log()).sum(2).mean(0)
    assert js.shape == (2, 3, 3)
    torch.testing.assert_close(js, direct, rtol=1e-12, atol=1e-12)
    q = _random_probs(3, 7, 5, dim=-1)  # [M, ..., C] with the default dim
    mq = q.mean(0)
    torch.testing.assert_close(js_divergence(q), -(mq * mq.log()).sum(-1) + (q * q.log()).sum(-1).mean(0))


def test_js_bounds_and_special_cases():
    p = _random_probs(1, 6, 5, dim=-1).expand(4, 6, 5)
    assert torch.all(js_divergence(p) == 0)  # identical members
    two = _random_probs(2, 1000, 4, dim=-1, seed=1).float()
    js = js_divergence(two)
    assert torch.all(js >= 0) and torch.all(js <= math.log(2) + 1e-6)
    disjoint = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]]])  # one-hot, with zeros: 0·log 0 = 0
    assert js_divergence(disjoint).item() == pytest.approx(math.log(2), rel=1e-6)
    many = _random_probs(10, 2, 3, 8, 8, dim=2, seed=2).float()
    assert torch.all(js_divergence(many, dim=2) >= 0)
    with pytest.raises(ValueError, match="members"):
        js_divergence(many, dim=0)


def test_image_scores():
    js = torch.arange(100, dtype=torch.float32).reshape(1, 10, 10)
    assert image_scores(js).item() == pytest.approx(sum(range(90, 100)) / 10)  # top 10 of 100 pixels
    assert image_scores(js, top_fraction=0.29).item() == pytest.approx(sum(range(71, 100)) / 29)
    assert image_scores(js, rule="mean").item() == pytest.approx(49.5)
    tiny = torch.tensor([[[0.1, 0.7], [0.3, 0.2]], [[0.0, 0.0], [0.0, 0.5]]])  # < 10 pixels: the top one
    torch.testing.assert_close(image_scores(tiny), torch.tensor([0.7, 0.5]))
    with pytest.raises(ValueError, match="unknown score rule"):
        image_scores(js, rule="max")


def test_vote_differs_from_mean_argmax_and_ties_go_low():
    # one pixel, three members, three classes: two members narrowly prefer class 1,
    # one is sure of class 0 -> vote says 1, the mean probability says 0
    p = torch.tensor([[0.45, 0.55, 0.0], [0.45, 0.55, 0.0], [1.0, 0.0, 0.0]])
    probs = p[:, None, :, None, None]  # [M=3, B=1, C=3, 1, 1]
    assert vote_labels(probs).item() == 1 and mean_labels(probs).item() == 0
    # vote tie between classes 2 and 1 -> the lower id, 1
    tie = torch.tensor([[0.0, 0.1, 0.9], [0.0, 0.9, 0.1]])[:, None, :, None, None]
    assert vote_labels(tie).item() == 1
    # a tie inside one member's probabilities -> its lower class
    assert vote_labels(torch.tensor([[0.0, 0.5, 0.5]])[:, None, :, None, None]).item() == 1
    batch = _random_probs(5, 2, 4, 3, 6, dim=2)
    assert vote_labels(batch).shape == (2, 3, 6) and mean_labels(batch).shape == (2, 3, 6)
    single = batch[:1]
    assert torch.equal(vote_labels(single), single[0].argmax(1))
