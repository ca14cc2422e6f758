"""VQGAN and its class-conditional transformer prior in taming-transformers' release layout,
checked against taming's own modules run on the same tiny weights
(tests/data/make_vqgan_reference.py): encoding (codes, ties), decoding, decoder features,
prior logits and seeded sampling; plus the Lightning checkpoint reader (callback classes
pickled by name, no Lightning, no code run), strict keys, one-line errors and the CLI."""

from __future__ import annotations

import importlib.abc
import json
import shutil
import sys
import types
from collections import OrderedDict
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from labelfactory.cli import main
from labelfactory.generators import GENERATORS
from labelfactory.generators.checkpoints import CheckpointError
from labelfactory.generators.loading import convert_checkpoint, load_generator, read_checkpoint
from labelfactory.generators.taming_prior import filter_logits

from helpers import assert_float32_close

DATA = Path(__file__).parent / "data"
FOLDER = DATA / "vqgan"
REF = load_file(str(DATA / "vqgan_reference.safetensors"))
with safe_open(str(DATA / "vqgan_reference.safetensors"), "pt") as _f:
    SAMPLES = json.loads(_f.metadata()["samples"])
with safe_open(str(FOLDER / "weights.safetensors"), "pt") as _f:
    _EXPONENTS = json.loads(_f.metadata()["exponents"])
WEIGHTS = {k: v.float() * 2.0 ** -_EXPONENTS[k] for k, v in load_file(str(FOLDER / "weights.safetensors")).items()}
VQ_WEIGHTS = {k.removeprefix("first_stage_model."): v for k, v in WEIGHTS.items() if k.startswith("first_stage_model.")}
# what a VQGAN training run's checkpoint also holds: the discriminator and LPIPS of its loss
LOSS = {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4),
        "loss.perceptual_loss.net.slice1.0.weight": torch.randn(4, 3, 3, 3),
        "loss.perceptual_loss.lin0.model.1.weight": torch.randn(1, 4, 1, 1)}
LAYERS = ["mid", "up1", "up0"]
LIGHTNING_MODULE = "pytorch_lightning.callbacks.model_checkpoint"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def boom():  # what a malicious pickle would call; the reader must never get here
    raise AssertionError("code from the checkpoint was run")


def save_lightning(state_dict: dict, path: Path, callback_state: dict | None = None) -> None:
    """``torch.save`` a checkpoint as pytorch-lightning 1.0 writes it: its ``callbacks`` is keyed by
    the ModelCheckpoint *class*, pickled by name (a stand-in here, importable only while saving)."""
    modules = {name: types.ModuleType(name) for name in
               ("pytorch_lightning", "pytorch_lightning.callbacks", LIGHTNING_MODULE)}
    ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": LIGHTNING_MODULE})
    modules[LIGHTNING_MODULE].ModelCheckpoint = ModelCheckpoint
    state = callback_state or {"monitor": "val/rec_loss", "best_model_score": torch.tensor(0.31),
                               "best_model_path": "logs/x/checkpoints/epoch=3.ckpt"}
    ckpt = {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.0.8",
            "callbacks": {ModelCheckpoint: state},
            "optimizer_states": [{"state": {0: {"step": 1200, "exp_avg": torch.zeros(2)}},
                                  "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "params": [0]}]}],
            "lr_schedulers": [], "state_dict": OrderedDict(state_dict)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with mock.patch.dict(sys.modules, modules):
        torch.save(ckpt, path)


def make_release(root: Path, kind: str = "vqgan", edit=None) -> Path:
    """A release folder: ``checkpoints/last.ckpt`` + ``configs/`` as taming ships them."""
    if kind == "vqgan":
        sd, config = {**VQ_WEIGHTS, **LOSS}, "model.yaml"
    else:
        sd = {**WEIGHTS, **{f"first_stage_model.{k}": v for k, v in LOSS.items()}}
        config = "cin_transformer-project.yaml"
    if edit:
        edit(sd)
    save_lightning(sd, root / "checkpoints" / "last.ckpt")
    (root / "configs").mkdir()
    shutil.copy(FOLDER / config, root / "configs" / (config if kind == "vqgan" else "2021-04-03T19-39-50-project.yaml"))
    return root


class _NoLightning(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pytorch_lightning", "lightning"):
            raise AssertionError(f"the reader imported {name}")
        return None


@pytest.fixture
def no_lightning():
    assert importlib.util.find_spec("pytorch_lightning") is None
    finder = _NoLightning()
    sys.meta_path.insert(0, finder)
    yield
    sys.meta_path.remove(finder)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("vqgan") / "vqgan_imagenet_f16")


@pytest.fixture(scope="module")
def cin_release(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("cin") / "2021-04-03T19-39-50_cin_transformer", "cin")


@pytest.fixture(scope="module")
def backend(release):
    return load_generator(release)


@pytest.fixture(scope="module")
def cin(cin_release):
    return load_generator(cin_release)


def one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


# --- loading ---------------------------------------------------------------------
def test_release_folder_loads_without_lightning(release, no_lightning):
    b = load_generator(release)
    assert type(b) is GENERATORS.get("vqgan")
    ddconfig = yaml.safe_load((FOLDER / "model.yaml").read_text())["model"]["params"]["ddconfig"]
    assert b.arch_config["ddconfig"] == {**ddconfig, "resamp_with_conv": True}
    assert (b.arch_config["embed_dim"], b.arch_config["n_embed"], b.arch_config["prior"]) == (4, 16, None)
    assert (b.latent_shape, b.z_dim, b.resolution, b.num_classes) == ((8, 8), 64, 16, 0)
    assert set(b.state_tensors()) == set(VQ_WEIGHTS)  # loss.* dropped, nothing else
    assert "pytorch_lightning" not in sys.modules


def test_cin_release_folder_loads_the_prior(cin):
    assert cin.arch_config["prior"] == {"vocab_size": 16, "block_size": 64, "n_layer": 2, "n_head": 4, "n_embd": 32,
                                        "n_unmasked": 0, "n_classes": 5, "sos_token": 0}
    assert cin.num_classes == 5
    assert set(cin.state_tensors()) == set(VQ_WEIGHTS) | {k for k in WEIGHTS if k.startswith("transformer.")}


def test_ckpt_beside_configs_uses_them(release, backend):
    assert load_generator(release / "checkpoints" / "last.ckpt").arch_config == backend.arch_config


def test_bare_ckpt_infers_the_architecture(tmp_path, backend):
    save_lightning({**VQ_WEIGHTS, **LOSS}, tmp_path / "vqgan.ckpt")
    raw = read_checkpoint(tmp_path / "vqgan.ckpt")
    assert raw.notes == {"config": "inferred from shapes"}
    bare = load_generator(tmp_path / "vqgan.ckpt")
    # shapes fix all but the resolution, taken as a 16x16 code grid; attention stays at level 1
    want = {**backend.arch_config["ddconfig"], "resolution": 32, "attn_resolutions": [16]}
    assert bare.arch_config["ddconfig"] == want
    assert bare.latent_shape == (16, 16)
    with torch.no_grad():
        img, _ = bare.module.decode(REF["decode/codes"])
    assert_float32_close(img, REF["decode/images"])


# --- outputs against taming's modules ------------------------------------------------------
def test_encode_equals_taming(backend):
    codes = backend.encode(REF["encode/images"].numpy())
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, REF["encode/codes"].numpy())


def test_encode_decode_round_trip_equals_vqmodel_forward(backend):
    recon = backend.render(backend.encode(REF["encode/images"].numpy()))
    assert_float32_close(recon, REF["encode/reconstruction"])


def test_decode_equals_taming(backend):
    out = backend.synthesize(REF["decode/codes"], features=False)
    assert out.features == {}
    assert_float32_close(out.images, REF["decode/images"])


def test_features_equal_taming_in_forward_order(backend):
    assert list(backend.feature_shapes()) == LAYERS
    feats = backend.render_features(REF["decode/codes"][:1].numpy())
    assert list(feats) == LAYERS
    for name, shape in backend.feature_shapes().items():
        assert feats[name].shape == (1, *shape)
        assert_float32_close(feats[name], REF[f"features/{name}"])


def test_quantizer_picks_as_vector_quantizer2_ties_to_first(backend):
    codes = backend.module.quantize.codes(REF["quantize/z"])
    torch.testing.assert_close(codes, REF["quantize/codes"], rtol=0, atol=0)
    assert codes.reshape(-1)[:2].tolist() == [3, 3]  # rows 3 and 7 are equal: the first wins


def test_prior_logits_equal_mingpt(cin):
    with torch.no_grad():
        logits, _ = cin.module.transformer(REF["prior/tokens"])
    assert_float32_close(logits, REF["prior/logits"])


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sampling_equals_sample_with_past(cin, name):
    seed, cls, temperature, top_k, top_p = SAMPLES[name]
    codes = cin.sample_codes([seed], [cls], temperature, top_k, 1.0 if top_p is None else top_p)
    np.testing.assert_array_equal(codes, REF[f"sample/{name}/codes"].numpy())
    assert_float32_close(cin.render(codes, [cls]), REF[f"sample/{name}/images"])


def test_sampling_is_per_seed_and_class(cin):
    seeds, classes = [0, 0, 1, 0], [1, 2, 1, 1]
    codes = cin.sample_codes(seeds, classes, top_k=None, batch_size=3)
    np.testing.assert_array_equal(codes[0], codes[3])  # the same (seed, class) in another batch
    assert (codes[0] != codes[1]).any() and (codes[0] != codes[2]).any()
    np.testing.assert_array_equal(cin.sample_codes([1], [1], top_k=None), codes[2:3])
    np.testing.assert_array_equal(cin.draw_latents([5], classes=[0]), REF["sample/release_defaults/codes"].numpy())


def test_filter_logits_as_transformers_4_3_1():
    inf = float("-inf")
    tied = torch.tensor([[2.0, 0.0, 1.0, 1.0, -1.0]])
    assert filter_logits(tied, top_k=2).tolist() == [[2.0, inf, 1.0, 1.0, inf]]  # ties with the k-th stay
    assert filter_logits(tied, top_k=99).tolist() == tied.tolist()
    assert filter_logits(tied, top_k=None, top_p=1.0) is tied
    # sorted probabilities .563 (0), .207 (2), .126 (3), .076 (1), .028 (4); cumulative .563, .770, .896, ...:
    # a token goes once the cumulative probability before it exceeds top_p
    logits = torch.tensor([[2.0, 0.0, 1.0, 0.5, -1.0]])
    assert filter_logits(logits, top_k=None, top_p=0.5).tolist() == [[2.0, inf, inf, inf, inf]]
    assert filter_logits(logits, top_k=None, top_p=0.6).tolist() == [[2.0, inf, 1.0, inf, inf]]
    assert filter_logits(logits, top_k=None, top_p=0.8).tolist() == [[2.0, inf, 1.0, 0.5, inf]]
    assert filter_logits(logits, top_k=4, top_p=0.8).tolist() == [[2.0, inf, 1.0, 0.5, inf]]


# --- the reader and strictness -------------------------------------------------------
def test_malicious_callback_state_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (boom, ())

    save_lightning(VQ_WEIGHTS, tmp_path / "evil.ckpt", callback_state={"x": Evil()})
    with pytest.raises(CheckpointError) as e:
        load_generator(tmp_path / "evil.ckpt")
    assert "refusing to load test_vqgan.boom" in one_line_error(e)


@pytest.mark.parametrize("kind, edit, key", [
    ("vqgan", lambda sd: sd.update({"decoder.up.0.block.9.conv1.weight": torch.zeros(1)}),
     "decoder.up.0.block.9.conv1.weight"),
    ("vqgan", lambda sd: sd.pop("encoder.down.1.attn.0.q.bias"), "encoder.down.1.attn.0.q.bias"),
    ("vqgan", lambda sd: sd.update({"lossy.weight": torch.zeros(1)}), "lossy.weight"),  # only loss.* is ignored
    ("cin", lambda sd: sd.update({"cond_stage_model.embedding.weight": torch.zeros(5, 4)}),
     "cond_stage_model.embedding.weight"),
    ("cin", lambda sd: sd.pop("transformer.blocks.1.attn.mask"), "transformer.blocks.1.attn.mask"),
])
def test_strict_keys_are_named(tmp_path, kind, edit, key):
    with pytest.raises(CheckpointError) as e:
        load_generator(make_release(tmp_path / "r", kind, edit))
    assert key in one_line_error(e)


def _edit_config(folder: Path, name: str, edit) -> None:
    path = folder / "configs" / name
    cfg = yaml.safe_load(path.read_text())
    edit(cfg["model"]["params"])
    path.write_text(yaml.safe_dump(cfg))


def test_config_errors_are_one_line(tmp_path):
    r = make_release(tmp_path / "codebook")
    _edit_config(r, "model.yaml", lambda p: p.update(n_embed=32))
    with pytest.raises(CheckpointError) as e:
        load_generator(r)
    assert "quantize.embedding.weight [16, 4] (expected [32, 4])" in one_line_error(e)

    r = make_release(tmp_path / "vocab", "cin")
    _edit_config(r, "2021-04-03T19-39-50-project.yaml",
                 lambda p: p["transformer_config"]["params"].update(vocab_size=32))
    with pytest.raises(CheckpointError) as e:
        load_generator(r)
    assert "vocab_size 32 is not the codebook size n_embed 16" in one_line_error(e)

    r = make_release(tmp_path / "cond", "cin")
    _edit_config(r, "2021-04-03T19-39-50-project.yaml",
                 lambda p: p.update(cond_stage_config={"target": "taming.models.vqgan.VQModel"}))
    with pytest.raises(CheckpointError) as e:
        load_generator(r)
    assert "cond stage 'taming.models.vqgan.VQModel' is not supported" in one_line_error(e)

    r = make_release(tmp_path / "noconfig")
    shutil.rmtree(r / "configs")
    with pytest.raises(CheckpointError) as e:
        load_generator(r)
    assert "without its config" in one_line_error(e)

    shutil.copytree(tmp_path / "cond" / "checkpoints", tmp_path / "bare")
    with pytest.raises(CheckpointError) as e:
        load_generator(tmp_path / "bare" / "last.ckpt")
    assert "needs its config" in one_line_error(e)


def test_bad_latents_and_images_are_one_line_errors(backend, cin):
    codes = REF["decode/codes"].numpy().copy()
    codes[0, 0, 0] = 16
    for bad, match in [(codes, r"in \[0, 16\) \(the codebook size\), got \[0, 16\]"),
                       (codes.astype(np.float32), "integer code indices"),
                       (codes[:, :4], r"shape \[N, 8, 8\]")]:
        with pytest.raises(ValueError, match=match) as e:
            backend.render(bad)
        one_line_error(e)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        backend.encode(REF["encode/images"].numpy() * 1.5)
    with pytest.raises(ValueError, match="no truncation"):
        backend.render(REF["decode/codes"].numpy(), truncation=0.7)
    with pytest.raises(ValueError, match="no transformer prior"):
        backend.sample_codes([0])
    with pytest.raises(ValueError, match="class-conditional"):
        cin.sample_codes([0])
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        cin.sample_codes([0], [5])
    with pytest.raises(ValueError, match="top_p"):
        cin.sample_codes([0], [1], top_p=0.0)


def test_canonical_round_trip(cin_release, cin, tmp_path):
    dest = tmp_path / "cin.safetensors"
    meta = convert_checkpoint(cin_release, dest)
    again = load_generator(dest)
    assert again.generator_hash == cin.generator_hash == meta["generator_hash"]
    np.testing.assert_array_equal(again.sample_codes([3], [4], 0.7, 5, 0.9), REF["sample/filtered/codes"].numpy())


# --- CLI ----------------------------------------------------------------------------
def test_cli_encode_render_features(release, tmp_path):
    images, codes, out, feats = (tmp_path / n for n in ("x.npy", "codes.npy", "out.npy", "f.npz"))
    np.save(images, REF["encode/images"].numpy())
    assert main(["encode", "--checkpoint", str(release), "--images", str(images), "--out", str(codes),
                 "--device", "cpu"]) == 0
    np.testing.assert_array_equal(np.load(codes), REF["encode/codes"].numpy())
    assert main(["render", "--checkpoint", str(release), "--latents", str(codes), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert_float32_close(np.load(out), REF["encode/reconstruction"])
    np.save(codes, REF["decode/codes"][0].numpy())  # one grid [h, w]
    assert main(["features", "--checkpoint", str(release), "--latents", str(codes), "--out", str(feats),
                 "--device", "cpu"]) == 0
    with np.load(feats) as f:
        assert list(f) == LAYERS
        for name in LAYERS:
            assert_float32_close(f[name], REF[f"features/{name}"])


def test_cli_errors(release, tmp_path, capfd):
    codes = tmp_path / "codes.npy"
    np.save(codes, np.full((1, 8, 8), 99, dtype=np.int64))
    assert main(["render", "--checkpoint", str(release), "--latents", str(codes), "--out", str(tmp_path / "o.npy"),
                 "--device", "cpu"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "code indices must be in [0, 16) (the codebook size), got [99, 99]" in err[0]
    from helpers import tiny_generator

    g = tiny_generator()
    torch.save({"g_ema": {k: v for k, v in g.module.state_dict().items() if k != "latent_avg"},
                "latent_avg": g.module.latent_avg.clone()}, tmp_path / "g.pt")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 16, 16), dtype=np.float32))
    assert main(["encode", "--checkpoint", str(tmp_path / "g.pt"), "--images", str(tmp_path / "x.npy"),
                 "--out", str(tmp_path / "c.npy"), "--device", "cpu"]) == 1
    assert "stylegan2 generator has no encoder" in capfd.readouterr().err


def test_cli_latents_draws_the_priors_codes(cin_release, tmp_path, capfd):
    """`labelfactory latents` on a class-conditional transformer release: the codes of the
    reference (taming's own sampling, tests/data) for seed 3, class 4."""
    out = tmp_path / "codes.npy"
    assert main(["latents", "--checkpoint", str(cin_release), "--seeds", "3", "--class", "4", "--temperature", "0.7",
                 "--top-k", "5", "--top-p", "0.9", "--out", str(out)]) == 0
    codes = np.load(out)
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, REF["sample/filtered/codes"].numpy())
    assert main(["latents", "--checkpoint", str(cin_release), "--seeds", "3", "--out", str(out)]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prior is class-conditional" in err[0]
