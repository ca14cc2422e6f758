"""Bring your own generator: a user's nn.Module classes (tests/user_generators.py) as the
``torch-module`` backend, by unit, through the CLI and through the whole workflow."""

import importlib.metadata
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from labelfactory.annotations.importing import import_annotations
from labelfactory.annotations.handout import sample_for_annotation
from labelfactory.annotations.labels import AnnotationError
from labelfactory.cli import main
from labelfactory.config import ConfigError, validate_config
from labelfactory.generators import torch_module
from labelfactory.generators.base import images_to_uint8
from labelfactory.generators.biggan import truncated_normal
from labelfactory.generators.checkpoints import CheckpointError
from labelfactory.generators.loading import convert_checkpoint, load_generator
from labelfactory.generators.torch_module import TorchModuleBackend, package_version

from helpers import REPO, make_tiny_conditional_project, make_tiny_project, snakemake, tiny_mask
from user_generators import DCGAN, ConditionalDCGAN

DCGAN_SPEC = {"class_path": "user_generators:DCGAN", "kwargs": {"nz": 16, "ngf": 8, "size": 16},
              "key": "netG_state_dict", "latent_shape": [16, 1, 1],
              "tap_types": ["ConvTranspose2d", "BatchNorm2d"]}
COND_SPEC = {"class_path": "user_generators:ConditionalDCGAN", "kwargs": {"nz": 12, "size": 32},
             "latent_shape": [12], "latent_distribution": "truncated-normal", "num_classes": 2,
             "class_input": "index", "output_range": [0, 1], "taps": ["blocks.0", "blocks.3", "to_rgb"],
             "class_embedding": "embed.weight"}
FORWARD_ORDER = {"main.0": (16, 4, 4), "main.1": (16, 4, 4), "main.3": (8, 8, 8), "main.4": (8, 8, 8),
                 "main.6": (3, 16, 16)}


def _trained_like(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and batch-norm statistics (fresh ones are 0/1 and hide mistakes)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.2)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return module.eval()


def save_dcgan(path, seed: int = 0, **kwargs):
    """A DCGAN checkpoint as training scripts save it: the state dict under a key, beside other entries."""
    g = _trained_like(DCGAN(**{**DCGAN_SPEC["kwargs"], **kwargs}), seed)
    torch.save({"netG_state_dict": g.state_dict(), "epoch": 25}, path)
    return g


def save_conditional(path, seed: int = 1):
    from safetensors.torch import save_file

    g = _trained_like(ConditionalDCGAN(**COND_SPEC["kwargs"]), seed)
    save_file(g.state_dict(), str(path))
    return g


@pytest.fixture
def dcgan(tmp_path):
    path = tmp_path / "netG.pth"
    return path, save_dcgan(path)


def backend(path, **changes) -> TorchModuleBackend:
    return load_generator(path, generator={**DCGAN_SPEC, **changes})


# --- taps ---------------------------------------------------------------------------------
def test_taps_by_rule_are_in_forward_order_with_their_shapes(dcgan):
    b = backend(dcgan[0])
    assert list(b.feature_shapes().items()) == list(FORWARD_ORDER.items())
    assert b.resolution == 16 and b.num_classes == 0 and b.class_embedding() is None
    # a base-class name selects every normalisation layer
    assert list(backend(dcgan[0], tap_types=["_BatchNorm"]).feature_shapes()) == ["main.1", "main.4"]


def test_taps_by_name_follow_the_forward_pass_and_are_copied(dcgan):
    path, g = dcgan
    b = backend(path, taps=["main.4", "main.0"], tap_types=[])
    assert list(b.feature_shapes()) == ["main.0", "main.4"]
    z = b.draw_latents([3, 4])
    feats = b.render_features(z)
    x = torch.from_numpy(z).reshape(2, 16, 1, 1)
    with torch.no_grad():
        bn = g.main[:5](x)  # main.4 is the batch norm; main.5, LeakyReLU(inplace) follows it
    assert np.allclose(feats["main.4"], bn.numpy(), atol=1e-5)
    assert feats["main.4"].min() < 0  # not rectified in place by the activation after it
    assert set(backend(path, taps=["main.4"]).feature_shapes()) == set(FORWARD_ORDER)  # names ∪ rule


def test_images_are_the_modules_output_mapped_to_minus_one_one(tmp_path):
    g = save_conditional(tmp_path / "g.safetensors")
    b = load_generator(tmp_path / "g.safetensors", generator=COND_SPEC)
    z = b.draw_latents([0, 1, 2], truncation=0.5)
    images = b.render(z, [1, 0, 1])
    with torch.no_grad():
        expected = 2 * g(torch.from_numpy(z), torch.tensor([1, 0, 1])) - 1
    assert np.allclose(images, expected.numpy(), atol=1e-5) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(b.class_embedding(), g.embed.weight.detach())
    assert list(b.feature_shapes()) == ["blocks.0", "blocks.3", "to_rgb"]
    with pytest.raises(ValueError, match=r"give a feature map \[B, C, h, w\]: \['fc gave \[2, 512\]'\]"):
        load_generator(tmp_path / "g.safetensors", generator={**COND_SPEC, "taps": ["fc"]})


def test_onehot_class_input_renders_as_the_index_one(tmp_path):
    save_conditional(tmp_path / "g.safetensors")
    index = load_generator(tmp_path / "g.safetensors", generator=COND_SPEC)
    onehot = load_generator(tmp_path / "g.safetensors", generator={
        **COND_SPEC, "kwargs": {**COND_SPEC["kwargs"], "onehot": True}, "class_input": "onehot",
        "class_embedding": None})
    z = index.draw_latents([5, 6])
    assert np.allclose(index.render(z, [0, 1]), onehot.render(z, [0, 1]), atol=1e-6)
    assert not np.allclose(index.render(z, [0, 1]), index.render(z, [1, 0]), atol=1e-3)
    assert torch.equal(onehot.class_embedding(), torch.eye(2))
    assert index.generator_hash != onehot.generator_hash


# --- latents ------------------------------------------------------------------------------
def test_latents_follow_the_seed_convention(dcgan, tmp_path):
    b = backend(dcgan[0])
    z = b.draw_latents([7, 8])
    assert z.shape == (2, 16) and np.array_equal(z[1], np.random.RandomState(8).randn(16).astype(np.float32))
    with pytest.raises(ValueError, match="truncated-normal"):
        b.draw_latents([7], truncation=0.7)
    # latents as the module takes them or flat render alike; others are refused
    assert np.array_equal(b.render(z.reshape(2, 16, 1, 1)), b.render(z))
    with pytest.raises(ValueError, match=r"latents must have shape \[N, 16\]"):
        b.render(np.zeros((2, 8, 1, 1), np.float32))
    save_conditional(tmp_path / "g.safetensors")
    c = load_generator(tmp_path / "g.safetensors", generator=COND_SPEC)
    zt = c.draw_latents([3], truncation=0.5)
    assert np.allclose(zt, truncated_normal([3], 12, 0.5)) and np.abs(zt).max() <= 1.0


# --- bad input: one line each ---------------------------------------------------------------
BAD = [
    ({"class_path": "userlab.models:DCGAN"}, r"cannot import 'userlab.models'.*PYTHONPATH"),
    ({"class_path": "user_generators:NoSuchGenerator"}, r"has no 'NoSuchGenerator'"),
    ({"class_path": "user_generators.DCGAN"}, r"class_path .*need 'package.module:Class'"),
    ({"class_path": "numpy:ndarray"}, r"not a torch.nn.Module class"),
    ({"kwargs": {"nz": 16, "ngf": 4, "size": 16}}, r"weights do not match.*wrong shape \['main.0.weight"),
    ({"kwargs": {"nz": 16, "ngf": 8, "size": 32}}, r"weights do not match.*missing \['main.7.bias"),
    ({"kwargs": {"channels": 3}}, r"DCGAN\(\*\*\{'channels': 3\}\) failed \(TypeError"),
    ({"latent_shape": [100, 1, 1]}, r"does not take latents of shape \[2, 100, 1, 1\].*16 channels"),
    ({"taps": ["main.99"], "tap_types": []}, r"unknown tap modules \['main.99'\].*'main.0'"),
    ({"tap_types": ["Conv3d"]}, r"tap_types \['Conv3d'\] match no module.*ConvTranspose2d"),
    ({"class_path": "user_generators:BatchStatsDCGAN"}, r"differs by .* between a batch of 2 and alone"),
    ({"key": "generator"}, r"no key 'generator'"),
    ({"key": None}, r"entries \['netG_state_dict', 'epoch'\] are not tensors; set `key`"),
    ({"taps": [], "tap_types": []}, r"give module names \(taps\) or types"),
    ({"latent_distribution": "uniform"}, r"latent_distribution 'uniform'"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[",".join(c) for c, _ in BAD])
def test_bad_generator_spec_is_one_line(dcgan, change, message):
    with pytest.raises(ValueError, match=message) as e:
        backend(dcgan[0], **change)
    assert "\n" not in str(e.value)


def test_pickled_module_is_refused_in_one_line(tmp_path):
    torch.save(DCGAN(), tmp_path / "netG_module.pth")  # the whole module, pickled
    with pytest.raises(CheckpointError, match="not the module") as e:
        load_generator(tmp_path / "netG_module.pth", generator={**DCGAN_SPEC, "key": None})
    assert "\n" not in str(e.value)


# --- hash ---------------------------------------------------------------------------------
def test_hash_covers_kwargs_weights_and_version_but_not_taps(dcgan, tmp_path, monkeypatch, caplog):
    path, _ = dcgan
    h = backend(path).generator_hash
    assert backend(path).generator_hash == h
    assert backend(path, taps=["main.0"], tap_types=[]).generator_hash == h
    assert backend(path, kwargs={**DCGAN_SPEC["kwargs"], "leak": 0.2}).generator_hash != h
    assert backend(path, output_range=[-2, 2]).generator_hash != h
    save_dcgan(tmp_path / "other.pth", seed=5)
    assert backend(tmp_path / "other.pth").generator_hash != h

    meta = convert_checkpoint(path, tmp_path / "g.safetensors", generator=DCGAN_SPEC)
    assert meta["generator_hash"] == h and meta["arch_config"]["package_version"] is None
    monkeypatch.setattr(torch_module, "package_version", lambda cls: "userlab==2.0")
    with caplog.at_level(logging.WARNING):
        bumped = load_generator(tmp_path / "g.safetensors")
    assert bumped.generator_hash != h and bumped.arch_config["package_version"] == "userlab==2.0"
    assert "hash is recomputed" in caplog.text


def test_package_version_of_installed_distributions():
    assert package_version(torch.nn.ConvTranspose2d) == f"torch=={importlib.metadata.version('torch')}"
    assert package_version(DCGAN) is None  # a module on PYTHONPATH, not an installed package


def _annotate(b, root, seeds, classes=None):
    df = sample_for_annotation(b, seeds, root, classes=classes)
    for i in df["id"]:
        image = np.asarray(Image.open(root / f"{i}.image.png"))
        Image.fromarray(tiny_mask(image) if classes is None else (tiny_mask(image) > 0).astype(np.uint8)).save(
            root / f"{i}.png")
    names = ["background", "a", "b"] if classes is None else ["background", "object"]
    (root / "labels.yaml").write_text(yaml.safe_dump({"names": names}))


def test_reimport_reports_another_generators_annotations(dcgan, tmp_path):
    b = backend(dcgan[0])
    _annotate(b, tmp_path / "ann", range(3))
    assert len(import_annotations(tmp_path / "ann", b, tmp_path / "a.h5")) == 3
    leaky = backend(dcgan[0], kwargs={**DCGAN_SPEC["kwargs"], "leak": 0.2})
    with pytest.raises(AnnotationError) as e:
        import_annotations(tmp_path / "ann", leaky, tmp_path / "b.h5")
    assert any("generator_hash" in p and "another generator" in p for p in e.value.problems)


# --- canonical form and CLI ---------------------------------------------------------------------
def test_spec_survives_conversion(dcgan, tmp_path):
    path, _ = dcgan
    meta = convert_checkpoint(path, tmp_path / "g.safetensors", generator=DCGAN_SPEC, source_url=str(path))
    side = json.loads((tmp_path / "g.json").read_text())
    assert side["arch"] == "torch-module" and side["converted_from"] == "torch-state-dict"
    assert side["arch_config"]["class_path"] == "user_generators:DCGAN" and "key" not in side["arch_config"]
    assert side["notes"] == {"key": "netG_state_dict"}
    again = load_generator(tmp_path / "g.safetensors")
    direct = backend(path)
    z = direct.draw_latents(range(4))
    assert again.generator_hash == meta["generator_hash"] == direct.generator_hash
    assert np.array_equal(again.render(z), direct.render(z))
    assert again.feature_shapes() == FORWARD_ORDER
    with pytest.raises(CheckpointError, match="leave format auto"):
        load_generator(path, fmt="rosinality", generator=DCGAN_SPEC)


def test_cli_convert_latents_render_features(dcgan, tmp_path, capsys):
    path, _ = dcgan
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(DCGAN_SPEC))
    ckpt, z, out = tmp_path / "g.safetensors", tmp_path / "z.npy", tmp_path / "f.npz"
    assert main(["convert", str(path), str(ckpt), "--generator", str(tmp_path / "spec.yaml")]) == 0
    assert main(["latents", "--checkpoint", str(ckpt), "--seeds", "0-4", "--out", str(z)]) == 0
    assert np.load(z).shape == (5, 16)
    assert main(["render", "--checkpoint", str(ckpt), "--latents", str(z), "--out", str(tmp_path / "i.npy"),
                 "--png-dir", str(tmp_path / "png"), "--device", "cpu"]) == 0
    images = np.load(tmp_path / "i.npy")
    assert images.shape == (5, 3, 16, 16) and np.array_equal(images, backend(path).render(np.load(z)))
    assert len(list((tmp_path / "png").glob("*.png"))) == 5
    capsys.readouterr()
    assert main(["features", "--checkpoint", str(ckpt), "--latents", str(z), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert list(np.load(out)) == list(FORWARD_ORDER) and np.load(out)["main.3"].shape == (5, 8, 8, 8)
    assert "main.0 [16, 4, 4], main.1 [16, 4, 4], main.3 [8, 8, 8]" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**DCGAN_SPEC, "taps": ["main.99"]}))
    assert main(["convert", str(path), str(tmp_path / "bad.safetensors"), "--generator",
                 str(tmp_path / "bad.yaml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown tap modules ['main.99']" in err[0]
    assert not (tmp_path / "bad.json").exists()


def test_config_takes_a_generator_entry(tmp_path):
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "labels.yaml").write_text("names: [background, thing]\n")
    cfg = {"checkpoints": {"g": {"url": "netG.pth", "generator": dict(DCGAN_SPEC)}},
           "tasks": {"t": {"checkpoint": "g", "annotations": str(tmp_path / "ann")}}}
    gen = validate_config(cfg, check_files=False)["checkpoints"]["g"]["generator"]
    assert gen["output_range"] == [-1, 1] and gen["num_classes"] == 0 and gen["class_input"] == "index"
    cfg["checkpoints"]["g"]["generator"] = {**DCGAN_SPEC, "class_path": "user_generators.DCGAN", "tapz": []}
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, check_files=False)
    assert "checkpoints.g.generator.class_path: 'user_generators.DCGAN' does not match" in str(e.value)
    assert "checkpoints.g.generator: Additional properties are not allowed ('tapz'" in str(e.value)


# --- end to end ---------------------------------------------------------------------------------
def _user_env() -> dict:
    """The workflow's Python imports the user's module from PYTHONPATH, as a lab's own code would."""
    return {**os.environ, "PYTHONPATH": str(REPO / "tests")}


def _use_own_generator(root, cfg: dict, ckpt: str, url: str, spec: dict, classes=None) -> TorchModuleBackend:
    """Point a tiny project's checkpoint at the user's generator and annotate its samples anew."""
    b = load_generator(root / url, generator=spec)
    (task,) = cfg["tasks"].values()
    shutil.rmtree(root / "ann")
    _annotate(b, root / "ann", range(task["annotation"]["num_samples"]), classes)
    cfg["checkpoints"] = {ckpt: {"url": url, "generator": spec}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return b


@pytest.mark.slow
def test_dcgan_through_the_workflow(tmp_path):
    root = tmp_path / "dcgan"
    cfg = make_tiny_project(root)  # downstream: the conditional test runs it
    save_dcgan(root / "netG.pth")
    b = _use_own_generator(root, cfg, "tiny", "netG.pth", DCGAN_SPEC)
    snakemake(root, env=_user_env())

    from labelfactory.annotations.annotation_set import load_annotation_set
    from labelfactory.features import FeatureStore
    import pandas as pd

    meta = json.loads((root / "resources/checkpoints/tiny.json").read_text())
    assert meta["arch"] == "torch-module" and meta["generator_hash"] == b.generator_hash
    assert load_annotation_set(root / "results/tiny/annotations.h5").generator_hash == b.generator_hash
    store = FeatureStore.open(root / "results/tiny/features.h5")
    assert list(store.shapes) == list(FORWARD_ORDER) and store.shapes["main.3"] == (8, 8, 8)
    manifest = pd.read_parquet(root / "results/tiny/manifest.parquet")
    assert len(manifest) == 12 and int(manifest["kept"].sum()) == 9
    assert (root / "results/tiny/report/samples.png").stat().st_size > 0

    # the same annotations under changed generator code: the re-render check names the hash
    spec = {**DCGAN_SPEC, "kwargs": {**DCGAN_SPEC["kwargs"], "leak": 0.2}}
    cfg["checkpoints"]["tiny"]["generator"] = spec
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(root, "--until", "import_annotations", env=_user_env(), check=False)
    assert proc.returncode != 0 and "annotations were made on another generator" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_conditional_generator_through_the_workflow(tmp_path):
    from labelfactory.synthesis.shards import read_samples
    import pandas as pd

    root = tmp_path / "cond"
    cfg = make_tiny_conditional_project(root)
    cfg["tasks"]["objects"]["downstream"].update(seeds=1, settings=["synthetic_filtered"])  # ~3 min
    save_conditional(root / "g.safetensors")
    b = _use_own_generator(root, cfg, "big", "g.safetensors", COND_SPEC, classes=[0, 1])
    snakemake(root, env=_user_env())

    side = json.loads((root / "results/objects/interpreter.json").read_text())
    assert side["interpreter"] == "conv"
    manifest = pd.read_parquet(root / "results/objects/manifest.parquet")
    assert manifest.groupby("class").size().to_dict() == {0: 6, 1: 6}
    row = manifest.iloc[7]
    images, _ = read_samples(root / row["shard"], np.array([row["index"]]))
    again = load_generator(root / "resources/checkpoints/big.safetensors")
    z = again.draw_latents([int(row["seed"])])
    assert again.generator_hash == b.generator_hash
    assert np.array_equal(images[0], images_to_uint8(torch.from_numpy(again.render(z, [int(row["class"])])))[0])
    runs = pd.read_csv(root / "results/objects/report/runs.csv")
    assert {"iou/car", "iou/face"} <= set(runs.columns)
    assert runs.set_index("setting")["num_train_images"].to_dict() == {"synthetic_filtered": 9}
    assert (root / "results/objects/report/main_table.md").stat().st_size > 0
