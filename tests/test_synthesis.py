import os
import shutil
import signal
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_generator, tiny_vqgan

from labelfactory.core.io import sha256_file
from labelfactory.generators import images_to_uint8
from labelfactory.synthesis.filtering import filter_manifest, write_manifest
from labelfactory.synthesis.shards import (
    ShardError,
    ShardSettings,
    read_samples,
    read_shard_scores,
    synthesize_shard,
    verify_shard,
)
from labelfactory.synthesis.uncertainty import image_scores, js_divergence, mean_labels, vote_labels

torch.set_num_threads(1)


class LinearEnsemble:
    """Stand-in interpreter: M fixed random linear maps of the upsampled, concatenated
    features, softmaxed. Raises on its ``fail_on_call``-th call when asked to."""

    def __init__(self, shapes, num_classes=4, members=3, resolution=16, seed=0, fail_on_call=None):
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(members, num_classes, sum(c for c, _, _ in shapes.values()), generator=g)
        self.num_classes, self.resolution, self.fail_on_call, self.calls = num_classes, resolution, fail_on_call, 0

    def member_probabilities(self, features, classes=None):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("interpreter died")
        size = (self.resolution, self.resolution)
        x = torch.cat([F.interpolate(f.float(), size=size, mode="bilinear", align_corners=False)
                       for f in features.values()], 1)
        return torch.einsum("mcd,bdhw->mbchw", self.weight, x).softmax(2)


@pytest.fixture
def backend():
    return tiny_generator()


@pytest.fixture
def interpreter(backend):
    return LinearEnsemble(backend.feature_shapes())


def raw_chunks(path):
    """The stored bytes (checksums included) of every chunk of every dataset."""
    with h5py.File(path, "r") as f:
        return {name: [d.id.read_direct_chunk(d.id.get_chunk_info(i).chunk_offset)
                       for i in range(d.id.get_num_chunks())] for name, d in f.items()}


def reference(backend, interpreter, seeds, batch_size, **kw):
    """What a shard should hold, computed directly with the same batching."""
    out = {k: [] for k in ("images", "probs")}
    for i in range(0, len(seeds), batch_size):
        z = torch.from_numpy(backend.draw_latents(seeds[i : i + batch_size]))
        with torch.no_grad():
            s = backend.synthesize(z, **kw)
            out["probs"].append(interpreter.member_probabilities(s.features))
        out["images"].append(images_to_uint8(s.images))
    return np.concatenate(out["images"]), torch.cat(out["probs"], 1)


def test_layout_dtypes_attributes_and_contents(tmp_path, backend, interpreter):
    seeds = [5, 3, 11, 0, 7]
    path = tmp_path / "shard.h5"
    info = synthesize_shard(backend, interpreter, path, seeds,
                            settings=ShardSettings(truncation=0.7, batch_size=2, store_latents=True),
                            attrs={"labeller_hash": "feedbeef", "task": "toy"}, progress=False)
    assert info.path == path and info.num_samples == 5
    with h5py.File(path, "r") as f:
        expected = {"images": (np.uint8, (5, 16, 16, 3)), "labels": (np.uint8, (5, 16, 16)),
                    "score": (np.float32, (5,)), "seed": (np.int64, (5,)), "class": (np.int32, (5,)),
                    "latents": (np.float32, (5, 16)), "uncertainty": (np.float16, (5, 16, 16))}
        assert set(f) == set(expected)
        for name, (dtype, shape) in expected.items():
            d = f[name]
            assert (d.dtype, d.shape, d.fletcher32) == (dtype, shape, True), name
            assert d.chunks == ((1, *shape[1:]) if len(shape) > 1 else shape), name
        a = dict(f.attrs)
        assert a["generator_hash"] == backend.generator_hash and a["labeller_hash"] == "feedbeef"
        assert a["task"] == "toy" and len(a["config_hash"]) == 64 and a["code_version"].startswith("0.")
        assert (a["label_rule"], a["score_rule"], a["noise"], a["num_samples"], a["format_version"]) == (
            "vote", "top10", "const", 5, 1)
        assert a["truncation"] == pytest.approx(0.7)
        np.testing.assert_array_equal(f["seed"][()], seeds)
        np.testing.assert_array_equal(f["class"][()], -1)
        np.testing.assert_array_equal(f["latents"][()], backend.draw_latents(seeds))
        images, probs = reference(backend, interpreter, seeds, 2, truncation=0.7)
        np.testing.assert_array_equal(f["images"][()], images)
    assert info.attrs == verify_shard(path).attrs == a

    synthesize_shard(backend, interpreter, path, seeds, settings=ShardSettings(store_uncertainty=False), progress=False)
    with h5py.File(path, "r") as f:
        assert "uncertainty" not in f and "latents" not in f


def test_labels_scores_and_uncertainty_come_from_the_uncertainty_functions(tmp_path, backend, interpreter):
    seeds = list(range(6))
    images, probs = reference(backend, interpreter, seeds, 4)
    js = js_divergence(probs, dim=2)
    vote_path, mean_path = tmp_path / "vote.h5", tmp_path / "mean.h5"
    synthesize_shard(backend, interpreter, vote_path, seeds, settings=ShardSettings(batch_size=4), progress=False)
    synthesize_shard(backend, interpreter, mean_path, seeds,
                     settings=ShardSettings(batch_size=4, label_rule="mean", score_rule="mean"), progress=False)
    with h5py.File(vote_path, "r") as v, h5py.File(mean_path, "r") as m:
        np.testing.assert_array_equal(v["labels"][()], vote_labels(probs).numpy())
        np.testing.assert_array_equal(m["labels"][()], mean_labels(probs).numpy())
        assert (v["labels"][()] != m["labels"][()]).any()  # the rule matters for this ensemble
        np.testing.assert_allclose(v["score"][()], image_scores(js, rule="top10").numpy(), rtol=1e-6)
        np.testing.assert_allclose(m["score"][()], image_scores(js, rule="mean").numpy(), rtol=1e-6)
        np.testing.assert_allclose(v["uncertainty"][()].astype(np.float32), js.numpy(), rtol=1e-3, atol=1e-3)
        assert v.attrs["config_hash"] != m.attrs["config_hash"]


def test_same_seeds_and_config_give_identical_bytes(tmp_path, backend, interpreter):
    seeds, settings = [4, 2, 9], ShardSettings(batch_size=2, store_latents=True)
    for noise in ("const", "random"):
        a, b = tmp_path / f"a-{noise}.h5", tmp_path / f"b-{noise}.h5"
        synthesize_shard(backend, interpreter, a, seeds, settings=replace(settings, noise=noise), progress=False)
        synthesize_shard(backend, interpreter, b, seeds, settings=replace(settings, noise=noise), progress=False)
        assert raw_chunks(a) == raw_chunks(b)
        assert sha256_file(a) == sha256_file(b)  # the whole file, metadata included
    with h5py.File(tmp_path / "a-const.h5") as c, h5py.File(tmp_path / "a-random.h5") as r:
        assert (c["images"][()] != r["images"][()]).any()
    hashes = {synthesize_shard(backend, interpreter, tmp_path / "x.h5", some_seeds, settings=replace(settings, **change),
                               progress=False).attrs["config_hash"]
              for some_seeds, change in ((seeds, {}), (seeds, {"batch_size": 3}), (seeds, {"truncation": 0.5}),
                                         ([4, 2], {}))}
    assert len(hashes) == 3  # batch size does not change the contents (with constant noise)


def test_classes_are_recorded_and_checked(tmp_path, backend, interpreter):
    backend.__class__ = type("Conditional", (type(backend),), {"num_classes": 3})
    path = tmp_path / "shard.h5"
    synthesize_shard(backend, interpreter, path, [0, 1, 2], classes=2, progress=False)
    assert read_shard_scores([path])["class"].tolist() == [2, 2, 2]
    synthesize_shard(backend, interpreter, path, [0, 1, 2], classes=[1, 0, 2], progress=False)
    assert read_shard_scores([path])["class"].tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="classes"):
        synthesize_shard(backend, interpreter, tmp_path / "bad.h5", [0, 1], classes=[0, 3], progress=False)
    with pytest.raises(ValueError, match="class-conditional"):
        synthesize_shard(backend, interpreter, tmp_path / "bad.h5", [0, 1], progress=False)
    assert not (tmp_path / "bad.h5").exists()


class WrongShape(LinearEnsemble):
    def member_probabilities(self, features, classes=None):
        return super().member_probabilities(features)[..., :8]


@pytest.mark.parametrize("kwargs, match", [
    (dict(seeds=[]), "at least one seed"),
    (dict(settings=dict(label_rule="max")), "label_rule"),
    (dict(settings=dict(score_rule="top5")), "score_rule"),
    (dict(settings=dict(top_fraction=0)), "top_fraction"),
    (dict(settings=dict(batch_size=0)), "batch_size"),
    (dict(attrs={"num_samples": 3}), "num_samples"),
    (dict(classes=[0, 0]), "unconditional"),
    (dict(interpreter=WrongShape), r"expected \[members, 2, 4, 16, 16\]"),
    (dict(interpreter=lambda s: LinearEnsemble(s, num_classes=300)), "uint8"),
    (dict(interpreter=lambda s: type("Other", (LinearEnsemble,), {"generator_hash": "0" * 64})(s)), "generator 0000"),
])
def test_bad_arguments_are_refused_and_nothing_is_written(tmp_path, backend, kwargs, match):
    args = {"seeds": [0, 1], "progress": False, **kwargs}
    make = args.pop("interpreter", LinearEnsemble)
    with pytest.raises(ValueError, match=match):
        settings = ShardSettings(**args.pop("settings", {}))  # settings are checked on construction
        synthesize_shard(backend, make(backend.feature_shapes()), tmp_path / "shard.h5", settings=settings, **args)
    assert list(tmp_path.iterdir()) == []


def test_settings_must_be_shard_settings(tmp_path, backend, interpreter):
    with pytest.raises(TypeError, match="ShardSettings"):
        synthesize_shard(backend, interpreter, tmp_path / "shard.h5", [0, 1], settings={"batch_size": 2}, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_shard_leaves_nothing_and_rerun_matches(tmp_path, backend, interpreter):
    path, ref = tmp_path / "shard.h5", tmp_path / "ref" / "shard.h5"
    kw = dict(seeds=range(7), settings=ShardSettings(batch_size=2), progress=False)
    dying = LinearEnsemble(backend.feature_shapes(), fail_on_call=3)
    with pytest.raises(RuntimeError, match="interpreter died"):
        synthesize_shard(backend, dying, path, **kw)
    assert list(tmp_path.iterdir()) == []
    synthesize_shard(backend, interpreter, path, **kw)
    synthesize_shard(backend, interpreter, ref, **kw)
    assert raw_chunks(path) == raw_chunks(ref)


def test_writer_thread_errors_reach_the_caller(tmp_path, backend, interpreter, monkeypatch):
    calls = []
    original = h5py.Dataset.__setitem__

    def failing(self, key, value):
        calls.append(key)
        if len(calls) == 4:
            raise OSError("disk full")
        original(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", failing)
    with pytest.raises(OSError, match="disk full"):
        synthesize_shard(backend, interpreter, tmp_path / "shard.h5", range(9), settings=ShardSettings(batch_size=2),
                         progress=False)
    assert list(tmp_path.iterdir()) == []


class KilledOnThirdBatch(LinearEnsemble):
    def member_probabilities(self, features, classes=None):
        if self.calls == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().member_probabilities(features)


def make_manifest(backend, interpreter):
    """Synthesize ``shard.h5`` and filter it into ``manifest.parquet`` in the current directory."""
    synthesize_shard(backend, interpreter, "shard.h5", range(7), settings=ShardSettings(batch_size=2), progress=False)
    write_manifest(filter_manifest(read_shard_scores(["shard.h5"]), 0.3), "manifest.parquet")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_killed_job_leaves_only_a_temp_file_and_rerun_gives_the_same_manifest(tmp_path, backend, interpreter,
                                                                               monkeypatch):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    killed.mkdir()
    pid = os.fork()
    if pid == 0:  # the child dies by SIGKILL while writing its third batch
        try:
            os.chdir(killed)
            synthesize_shard(backend, KilledOnThirdBatch(backend.feature_shapes()), "shard.h5", range(7),
                             settings=ShardSettings(batch_size=2), progress=False)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    leftovers = [p.name for p in killed.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".shard.h5.") and leftovers[0].endswith(".tmp")
    with pytest.raises(ShardError, match="shard.h5"):
        read_shard_scores([killed / "shard.h5"])

    monkeypatch.chdir(killed)
    make_manifest(backend, interpreter)
    clean.mkdir()
    monkeypatch.chdir(clean)
    make_manifest(backend, interpreter)
    assert sha256_file(killed / "manifest.parquet") == sha256_file(clean / "manifest.parquet")
    assert raw_chunks(killed / "shard.h5") == raw_chunks(clean / "shard.h5")


def flip_byte(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0xFF]))


def test_corrupted_and_truncated_shards_are_reported_by_name(tmp_path, backend, interpreter):
    good = tmp_path / "good.h5"
    synthesize_shard(backend, interpreter, good, range(4), progress=False)
    flipped, bad_image, truncated = (tmp_path / n for n in ("flipped.h5", "bad_image.h5", "truncated.h5"))
    for p in (flipped, bad_image, truncated):
        shutil.copy(good, p)
    with h5py.File(good, "r") as f:
        score_at = f["score"].id.get_chunk_info(0).byte_offset
        image_at = f["images"].id.get_chunk_info(2).byte_offset
    flip_byte(flipped, score_at + 5)
    flip_byte(bad_image, image_at + 100)
    with open(truncated, "r+b") as fh:
        fh.truncate(os.path.getsize(good) // 2)

    for bad in (flipped, truncated):
        with pytest.raises(ShardError, match=str(bad)):
            verify_shard(bad)
        with pytest.raises(ShardError, match=str(bad)) as e:
            read_shard_scores([good, bad])
        assert str(good) not in str(e.value)
    with pytest.raises(ShardError) as e:
        read_shard_scores([flipped, good, truncated])
    assert str(flipped) in str(e.value) and str(truncated) in str(e.value) and "2 bad shard" in str(e.value)

    assert verify_shard(bad_image).num_samples == 4  # images are not read by default ...
    with pytest.raises(ShardError, match=str(bad_image)):
        verify_shard(bad_image, full=True)  # ... but are with full=True
    with pytest.raises(ShardError, match=str(bad_image)):
        read_samples(bad_image, [2])
    assert verify_shard(good, full=True).num_samples == 4


@pytest.mark.parametrize("damage, match", [
    (lambda f: f.__delitem__("score"), r"missing datasets \['score'\]"),
    (lambda f: (f.__delitem__("seed"), f.create_dataset("seed", data=np.arange(4, dtype=np.int32),
                                                         fletcher32=True)), "seed should be int64"),
    (lambda f: (f.__delitem__("class"), f.create_dataset("class", data=np.zeros(3, np.int32), chunks=(3,),
                                                          fletcher32=True)), "class has 3 samples"),
    (lambda f: (f.__delitem__("labels"), f.create_dataset("labels", data=np.zeros((4, 16, 16), np.uint8))),
     "labels has no fletcher32"),
    (lambda f: f.attrs.__setitem__("num_samples", 9), "num_samples attribute 9"),
    (lambda f: f.attrs.__delitem__("config_hash"), "missing attributes"),
])
def test_malformed_shards_are_reported(tmp_path, backend, interpreter, damage, match):
    path = tmp_path / "shard.h5"
    synthesize_shard(backend, interpreter, path, range(4), progress=False)
    with h5py.File(path, "r+") as f:
        damage(f)
    with pytest.raises(ShardError, match=match) as e:
        verify_shard(path)
    assert str(path) in str(e.value)


def test_read_shard_scores_and_samples(tmp_path, backend, interpreter):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    synthesize_shard(backend, interpreter, a, [10, 11, 12], progress=False)
    synthesize_shard(backend, interpreter, b, [20, 21], progress=False)
    df = read_shard_scores([str(b), a])
    assert list(df.columns) == ["shard", "index", "seed", "class", "score"]
    assert df["shard"].tolist() == [str(b)] * 2 + [str(a)] * 3
    assert df["index"].tolist() == [0, 1, 0, 1, 2] and df["seed"].tolist() == [20, 21, 10, 11, 12]
    assert [str(t) for t in df.dtypes.iloc[1:]] == ["int64", "int64", "int32", "float32"]
    assert read_shard_scores([]).empty

    images, labels = read_samples(a, [2, 0, 2])
    with h5py.File(a, "r") as f:
        np.testing.assert_array_equal(images, f["images"][()][[2, 0, 2]])
        np.testing.assert_array_equal(labels, f["labels"][()][[2, 0, 2]])
    assert read_samples(a, [])[0].shape == (0, 16, 16, 3)
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        read_samples(a, [3])


# --- VQGAN: latents are code grids drawn by the class-conditional prior -------------------
@pytest.fixture(scope="module")
def vqgan():
    return tiny_vqgan()


def test_vqgan_shard_holds_the_priors_codes_per_seed_and_class(tmp_path, vqgan):
    lab = LinearEnsemble(vqgan.feature_shapes(), num_classes=2, resolution=16)
    seeds, classes = [5, 6, 7], [0, 1, 0]
    synthesize_shard(vqgan, lab, tmp_path / "s.h5", seeds, classes=classes,
                     settings=ShardSettings(batch_size=2, store_latents=True), progress=False)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        latents, images = f["latents"][()], f["images"][()]
    assert latents.dtype == np.int64 and latents.shape == (3, 64)
    for i, (seed, c) in enumerate(zip(seeds, classes)):  # one sample at a time: independent of the batch
        np.testing.assert_array_equal(latents[i], vqgan.sample_codes([seed], [c]).reshape(-1))
    rendered = images_to_uint8(torch.from_numpy(vqgan.render(latents, classes)))
    np.testing.assert_array_equal(images, rendered)
    # the class enters the draw: the same seed under the other class is another sample
    assert not np.array_equal(vqgan.sample_codes([5], [1]), latents[:1].reshape(1, 8, 8))
    synthesize_shard(vqgan, lab, tmp_path / "one.h5", [6], classes=[1], settings=ShardSettings(store_latents=True),
                     progress=False)
    with h5py.File(tmp_path / "one.h5", "r") as f:
        np.testing.assert_array_equal(f["latents"][0], latents[1])
        np.testing.assert_array_equal(f["images"][0], images[1])


def test_vqgan_sampling_options_reach_the_prior_and_the_config_hash(tmp_path, vqgan):
    lab = LinearEnsemble(vqgan.feature_shapes(), num_classes=2, resolution=16)
    sampling = {"temperature": 0.5, "top_k": 3}
    plain = synthesize_shard(vqgan, lab, tmp_path / "a.h5", [1, 2], classes=0,
                             settings=ShardSettings(store_latents=True), progress=False)
    sharp = synthesize_shard(vqgan, lab, tmp_path / "b.h5", [1, 2], classes=0,
                             settings=ShardSettings(store_latents=True, sampling=sampling), progress=False)
    assert plain.attrs["config_hash"] != sharp.attrs["config_hash"]
    with h5py.File(tmp_path / "b.h5", "r") as f:
        np.testing.assert_array_equal(f["latents"][()], vqgan.sample_codes([1, 2], [0, 0], **sampling).reshape(2, -1))
    with pytest.raises(ValueError, match=r"unknown VQGAN sampling options \['topk'\]"):
        synthesize_shard(vqgan, lab, tmp_path / "c.h5", [1], classes=0, settings=ShardSettings(sampling={"topk": 3}),
                         progress=False)
    with pytest.raises(ValueError, match="prior is class-conditional .2 classes.: give the class of every sample"):
        synthesize_shard(vqgan, lab, tmp_path / "c.h5", [1], progress=False)
    assert not (tmp_path / "c.h5").exists()


def test_sampling_options_are_refused_for_generators_without_a_prior(tmp_path, backend, interpreter):
    with pytest.raises(ValueError, match=r"latents come from seeds alone; sampling options \['temperature'\]"):
        synthesize_shard(backend, interpreter, tmp_path / "s.h5", [1],
                         settings=ShardSettings(sampling={"temperature": 0.7}), progress=False)
    assert not (tmp_path / "s.h5").exists()
