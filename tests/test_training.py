"""The toy-generator recipes: resumable training state and BigGAN's standing statistics."""

import json

import pytest
import torch

from labelfactory.generators.biggan import BigGANGenerator
from labelfactory.toybench.recipes.biggan import BigGANTrainConfig, finalize, standing_stats, train


def _tiny(kimg: float) -> BigGANTrainConfig:
    return BigGANTrainConfig(ch=4, d_ch=4, dim_z=16, shared_dim=8, batch=4, d_steps=2, kimg=kimg, ema_start=1,
                             standing_batches=2, checkpoint_every=1, snapshot_every=100)


def test_biggan_recipe_trains_resumes_and_writes_final_weights(tmp_path):
    state = train(_tiny(0.016), tmp_path, progress=False)  # 2 G steps of 2 D steps of 4 real images
    history = [json.loads(l) for l in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 2 and history[-1]["kimg"] == 0.016
    g = finalize(_tiny(0.016), state, "g")
    assert not g.training and torch.isfinite(g.generate(torch.randn(2, g.cfg.z_dim), torch.tensor([0, 3]))).all()
    assert (tmp_path / "final_g.png").exists()
    before = torch.load(tmp_path / "state.pt", weights_only=True)["g"]
    train(_tiny(0.032), tmp_path, progress=False)  # resumes at step 2, runs to 4
    history = [json.loads(l) for l in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4]
    after = torch.load(tmp_path / "state.pt", weights_only=True)["g"]
    assert not torch.equal(before["linear.weight"], after["linear.weight"])


def test_standing_statistics_are_the_mean_batch_statistics_of_each_layer_input():
    torch.manual_seed(0)
    g = BigGANGenerator(_tiny(1).g_config()).eval()
    standing_stats(g, n_classes=4, batches=3, batch=8, seed=5)
    # the first batch norm sees linear(z chunk 0): recompute its statistics independently
    gen = torch.Generator().manual_seed(5)
    means, variances = [], []
    with torch.no_grad():
        for _ in range(3):
            z = torch.randn(8, g.cfg.z_dim, generator=gen)
            torch.randint(0, 4, (8,), generator=gen)
            h = g.linear(z[:, : g.cfg.z_chunk]).view(8, -1, 4, 4)
            means.append(h.mean((0, 2, 3)))
            variances.append(h.var((0, 2, 3), unbiased=True))
    bn = g.blocks[0][0].bn1
    torch.testing.assert_close(bn.stored_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(bn.stored_var, torch.stack(variances).mean(0))


def test_recipe_flags_come_from_the_recipe_dataclass():
    """scripts/train_toy_*.py: a flag per int/float/str field (and fields with a parser), the
    recipe's defaults, the rest fixed; parsed flags give back the recipe."""
    from dataclasses import dataclass, field

    from labelfactory.toybench.recipes.recipe_cli import recipe_from_args, recipe_parser, work_dir

    @dataclass
    class Recipe:
        d_ch: int = 16
        lr: float = 2e-4
        cls: str = "car"
        classes: tuple[str, ...] = ("car", "face")
        channels: dict = field(default_factory=lambda: {4: 8})

    p = recipe_parser("doc", Recipe, {"d_ch": "D width"}, {"channels": lambda s: {4: int(s)}})
    flags = {a.dest for a in p._actions} - {"help"}
    assert flags == {"d_ch", "lr", "cls", "channels", "work_dir", "out"}
    assert recipe_from_args(Recipe, p.parse_args(["--out", "w/x.safetensors"])) == Recipe()
    args = p.parse_args(["--d-ch", "8", "--lr", "0.01", "--channels", "32", "--out", "w/x.safetensors"])
    assert recipe_from_args(Recipe, args) == Recipe(d_ch=8, lr=0.01, channels={4: 32})
    assert str(work_dir(args)) == "w/.train-x"
    with pytest.raises(SystemExit):
        p.parse_args(["--d-ch", "eight", "--out", "x"])
