"""The toy-generator recipes: resumable training state, BigGAN's standing statistics, the DCGAN."""

import json

import pytest
import torch

from labelfactory.generators.biggan import BigGANGenerator
from labelfactory.generators.torch_module import TorchModuleBackend
from labelfactory.toybench.recipes.biggan import BigGANTrainConfig, finalize, standing_stats, train
from labelfactory.toybench.recipes.dcgan import DCGANTrainConfig
from labelfactory.toybench.recipes.dcgan import finalize as dcgan_finalize
from labelfactory.toybench.recipes.dcgan import train as dcgan_train


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


def _tiny_dcgan(kimg: float) -> DCGANTrainConfig:
    return DCGANTrainConfig(nz=8, ngf=4, ndf=4, batch=4, kimg=kimg, checkpoint_every=1, snapshot_every=100)


def test_dcgan_recipe_trains_resumes_and_ships_a_torch_module_generator(tmp_path):
    """The weak generator of the small-parts domain: trains, resumes, and its final weights
    load through the torch-module backend (eval mode, its BatchNorm running statistics
    recomputed as exact averages), with the three BatchNorm outputs as taps."""
    cfg = _tiny_dcgan(0.008)
    dcgan_train(cfg, tmp_path, progress=False)
    history = [json.loads(l) for l in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 2
    before = torch.load(tmp_path / "state.pt", weights_only=True)["g"]
    dcgan_train(_tiny_dcgan(0.016), tmp_path, progress=False)  # resumes at step 2, runs to 4
    assert [json.loads(l)["step"] for l in (tmp_path / "history.jsonl").read_text().splitlines()] == [2, 4]
    after = torch.load(tmp_path / "state.pt", weights_only=True)["g"]
    assert not torch.equal(before["main.0.weight"], after["main.0.weight"])

    spec, tensors = dcgan_finalize(_tiny_dcgan(0.016), tmp_path / "state.pt", batches=3)
    bn = tensors["main.1.running_mean"]
    assert not torch.equal(bn, after["main.1.running_mean"]) and int(tensors["main.1.num_batches_tracked"]) == 3
    backend = TorchModuleBackend.from_tensors(spec, tensors)
    assert backend.resolution == 32 and backend.z_dim == 8
    assert backend.feature_shapes() == {"main.1": (16, 4, 4), "main.4": (8, 8, 8), "main.7": (4, 16, 16)}
    out = backend.synthesize(torch.from_numpy(backend.z_from_seeds([0, 1])))
    assert out.images.shape == (2, 3, 32, 32) and float(out.images.abs().max()) <= 1.0
