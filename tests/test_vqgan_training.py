"""The toy VQGAN recipe (labelfactory.toybench.recipes.vqgan) on a tiny config: a few steps lower both
phases' losses, a run is a function of its seed, finished phases are reused only under the
same recipe, and the written weights load as a class-conditional VQGAN."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from labelfactory.generators.loading import load_generator, write_canonical
from labelfactory.generators.base import images_to_uint8
from labelfactory.generators.vqgan import VQGANBackend
from labelfactory.toybench.quality import generator_samples, reconstruction_quality
from labelfactory.toybench.recipes.state import trained_sidecar
from labelfactory.toybench.recipes.vqgan import (VQGANTrainConfig, learning_rate, prior_loss, restart_dead_codes, train,
                                         train_prior, train_vqgan, training_batch, vq_loss)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = VQGANTrainConfig(size=16, ch_mult=(1, 2), z_channels=32, embed_dim=8, n_embed=32, batch=4, steps=3,
                        lr=2e-3, warmup=1, restart_every=2, restart_until=2, log_every=1,
                        prior_layers=1, prior_heads=2, prior_embd=16, prior_images_per_class=4, prior_batch=8,
                        prior_steps=3, prior_lr=3e-3, prior_warmup=1)


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_vqgan_steps_lower_the_loss(tmp_path):
    cfg = replace(TINY, steps=25)
    x = training_batch(cfg, 10_000)  # a batch the run never sees
    untrained = train_vqgan(replace(cfg, steps=0), tmp_path / "h0.jsonl")
    trained = train_vqgan(cfg, tmp_path / "h.jsonl")
    with torch.no_grad():
        before, after = vq_loss(untrained, x, cfg)[0].item(), vq_loss(trained, x, cfg)[0].item()
    assert after < 0.8 * before
    assert [json.loads(l)["step"] for l in (tmp_path / "h.jsonl").read_text().splitlines()] == list(range(1, 26))


def test_prior_steps_lower_the_loss(tmp_path):
    cfg = replace(TINY, prior_steps=60)
    rng = np.random.default_rng(0)
    classes = np.arange(40) % 4
    codes = (classes[:, None] * 7 + np.arange(64)[None] % 3 + rng.integers(0, 2, (40, 64))).astype(np.int64)
    gpt = train_prior(cfg, codes, classes, tmp_path / "h.jsonl")
    untrained = train_prior(replace(cfg, prior_steps=0), codes, classes, tmp_path / "h0.jsonl")
    c, k = torch.from_numpy(codes), torch.from_numpy(classes)
    with torch.no_grad():
        assert prior_loss(gpt, c, k).item() < 0.7 * prior_loss(untrained, c, k).item()


def test_dead_codes_move_onto_encoder_outputs(tmp_path):
    model = train_vqgan(replace(TINY, steps=0), tmp_path / "h.jsonl")
    used = torch.zeros(TINY.n_embed, dtype=torch.bool)
    used[:5] = True
    before = model.quantize.embedding.weight.clone()
    x = training_batch(TINY, 0)
    assert restart_dead_codes(model, used, x, torch.Generator().manual_seed(0)) == TINY.n_embed - 5
    after = model.quantize.embedding.weight
    assert torch.equal(after[:5], before[:5])
    z = model.quant_conv(model.encoder(x)).permute(0, 2, 3, 1).reshape(-1, TINY.embed_dim)
    assert all((z == row).all(1).any() for row in after[5:])


def test_learning_rate_warms_up_and_decays():
    lrs = [learning_rate(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_a_run_is_its_seed_and_phases_are_reused_only_for_their_recipe(tmp_path, caplog):
    a, b = train(TINY, tmp_path / "a"), train(TINY, tmp_path / "b")
    assert states_equal(a, b)
    assert not states_equal(a, train(replace(TINY, seed=1), tmp_path / "c"))
    caplog.set_level("INFO", logger="labelfactory.toybench.recipes.vqgan")
    assert states_equal(a, train(TINY, tmp_path / "a"))
    assert "reusing the finished vqgan phase" in caplog.text and "reusing the finished prior phase" in caplog.text
    caplog.clear()
    other_prior = train(replace(TINY, prior_lr=1e-3), tmp_path / "a")
    assert "reusing the finished vqgan phase" in caplog.text and "training prior again" in caplog.text
    assert states_equal(a.encoder, other_prior.encoder) and not states_equal(a.transformer, other_prior.transformer)
    phases = [json.loads(l)["phase"] for l in (tmp_path / "a" / "history.jsonl").read_text().splitlines()]
    assert phases == ["vqgan"] * TINY.steps + ["prior"] * TINY.prior_steps


def test_written_weights_load_as_a_class_conditional_vqgan(tmp_path):
    model = train(TINY, tmp_path / "work")
    meta = write_canonical(tmp_path / "vq.safetensors", VQGANBackend(model, model.cfg.to_dict()),
                           trained_sidecar("labelfactory.toybench.recipes.vqgan", TINY, tmp_path / "work"))
    assert meta["recipe"]["train_config"]["n_embed"] == TINY.n_embed and meta["recipe"]["train_seconds"] > 0
    backend = load_generator(tmp_path / "vq.safetensors")
    assert isinstance(backend, VQGANBackend) and backend.num_classes == 4 and backend.latent_shape == (8, 8)
    assert backend.generator_hash == meta["generator_hash"]
    codes = backend.sample_codes([0, 1], classes=[2, 2])
    samples = generator_samples(backend, [0, 1], gen_class=2)  # what the quality measures see
    np.testing.assert_array_equal(samples, images_to_uint8(torch.from_numpy(backend.render(codes))))
    rec = reconstruction_quality(backend, "car", n=3)
    assert rec["n"] == 3 and rec["psnr_p05"] <= rec["psnr_median"] and 1 <= rec["codes_used"] <= TINY.n_embed
