"""Annotation folders: hand-out, validation with collected problems, HDF5 import."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from labelfactory.annotations import handout as ann
from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.annotations.handout import sample_for_annotation
from labelfactory.annotations.importing import import_annotations
from labelfactory.annotations.labels import AnnotationError, LabelSet, load_labels
from labelfactory.core.visualize import palette
from labelfactory.generators.base import images_to_uint8, sample_id
from labelfactory.generators.stylegan2 import Generator, NoiseInjection, StyleGAN2Backend, StyleGAN2Config

LABELS = ["background", "body", "head", "tail"]
SEEDS = [3, 1, 4]
RES = 16


def make_backend(seed: int = 0, cls=StyleGAN2Backend) -> StyleGAN2Backend:
    """A tiny random 16×16 StyleGAN2 whose noise inputs matter (so noise drift shows)."""
    torch.manual_seed(seed)
    cfg = StyleGAN2Config(size=RES, style_dim=16, n_mlp=1, channels={4: 16, 8: 8, 16: 8})
    g = Generator(cfg)
    for m in g.modules():
        if isinstance(m, NoiseInjection):
            m.weight.data.fill_(0.5)
    return cls(g, cfg.to_dict())


class ConditionalBackend(StyleGAN2Backend):
    """The tiny generator posing as class-conditional (the classes do not change the image)."""

    @property
    def num_classes(self) -> int:
        return 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """16×16 renders gain nothing from threads and lose much on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def backend():
    return make_backend(0)


def label_mask(seed: int) -> np.ndarray:
    m = ((np.arange(RES * RES).reshape(RES, RES) + seed) % len(LABELS)).astype(np.uint8)
    m[0, 0] = 255
    return m


def fill_in(folder, names=LABELS):
    """Play the annotator: labels.yaml and an L-mode mask for every manifest row."""
    (folder / "labels.yaml").write_text(yaml.safe_dump({"names": names}))
    for sid, seed in pd.read_csv(folder / "manifest.csv")[["id", "seed"]].itertuples(index=False):
        Image.fromarray(label_mask(seed), mode="L").save(folder / f"{sid}.png")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, backend):
    d = tmp_path_factory.mktemp("pristine") / "ann"
    sample_for_annotation(backend, SEEDS, d)
    fill_in(d)
    return d


@pytest.fixture
def folder(tmp_path, pristine):
    """A valid filled-in folder of the three samples, fresh for each test to spoil."""
    return Path(shutil.copytree(pristine, tmp_path / "ann"))


@pytest.fixture
def out(tmp_path):
    (tmp_path / "out").mkdir()
    return tmp_path / "out" / "annotations.h5"


def expect_failure(folder, backend, out, *needles, **kwargs) -> AnnotationError:
    """Import must fail naming every needle, leaving no output and no temp file."""
    with pytest.raises(AnnotationError) as info:
        import_annotations(folder, backend, out, **kwargs)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in:\n{msg}"
    assert list(out.parent.iterdir()) == []
    return info.value


def edit_manifest(folder, fn):
    df = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    fn(df).to_csv(folder / "manifest.csv", index=False)


# -- round trip -------------------------------------------------------------------
def test_round_trip(folder, backend, out):
    aset = import_annotations(folder, backend, out)
    loaded = load_annotation_set(out)
    ids = [sample_id(s, -1) for s in SEEDS]
    expected = images_to_uint8(torch.from_numpy(backend.render(backend.draw_latents(SEEDS))))
    for a in (aset, loaded):
        assert a.ids == ids
        assert a.seeds.tolist() == SEEDS and a.seeds.dtype == np.int64
        assert a.classes.tolist() == [-1] * 3 and a.classes.dtype == np.int32
        np.testing.assert_array_equal(a.images, expected)
        np.testing.assert_array_equal(a.masks, np.stack([label_mask(s) for s in SEEDS]))
        np.testing.assert_array_equal(a.latents, backend.draw_latents(SEEDS))
        assert a.labels == LabelSet(tuple(LABELS), 255)
        assert (a.generator_hash, a.truncation, a.noise, a.resolution) == (backend.generator_hash, 1.0, "const", RES)
    with h5py.File(out) as f:
        assert f["images"].shape == (3, RES, RES, 3) and f["images"].dtype == np.uint8
        assert f["masks"].shape == (3, RES, RES) and f["latents"].dtype == np.float32
        assert json.loads(f.attrs["labels"]) == LABELS
        assert f.attrs["ignore_index"] == 255 and f.attrs["resolution"] == RES
        assert f.attrs["generator_hash"] == backend.generator_hash and f.attrs["noise"] == "const"
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def _with_keypoints(folder, entries):
    """labels.yaml names two keypoints; each sample gets ``entries[i]`` as its keypoints file."""
    (folder / "labels.yaml").write_text(yaml.safe_dump({"names": LABELS, "keypoints": {"names": ["a", "b"]}}))
    for sid, doc in zip([sample_id(s, -1) for s in SEEDS], entries):
        (folder / f"{sid}.keypoints.json").write_text(json.dumps(doc))


def test_keypoint_files_beside_the_masks(folder, backend, out):
    """<id>.keypoints.json beside each mask: kept in the set (through HDF5) in labels.yaml's order."""
    docs = [{"keypoints": [1, 2, 2, 3.5, 4, 1]}, {"keypoints": {"b": [5, 6, 2]}}, {"keypoints": [0, 0, 0, 7, 1, 2]}]
    _with_keypoints(folder, docs)
    aset = import_annotations(folder, backend, out)
    want = np.array([[[1, 2, 2], [3.5, 4, 1]], [[0, 0, 0], [5, 6, 2]], [[0, 0, 0], [7, 1, 2]]], np.float32)
    for a in (aset, load_annotation_set(out)):
        assert a.keypoints.ids == a.ids and a.keypoints.spec.names == ("a", "b")
        np.testing.assert_array_equal(a.keypoints.keypoints, want)


def test_bad_keypoint_files_are_each_one_line_with_the_masks_problems(folder, backend, out):
    ids = [sample_id(s, -1) for s in SEEDS]
    _with_keypoints(folder, [{"keypoints": [1, 2, 3, 0, 0, 0]}, {"keypoints": {"c": [1, 1, 2]}}])
    (folder / "s99999999.keypoints.json").write_text("{}")
    (folder / f"{ids[0]}.png").unlink()
    expect_failure(folder, backend, out, f"{ids[0]}.keypoints.json: keypoint 'a': visibility 3 is not one of",
                   f"{ids[1]}.keypoints.json: unknown keypoints ['c']", f"{ids[2]}.keypoints.json: missing",
                   "s99999999.keypoints.json: keypoints without a manifest row (extra file)", f"{ids[0]}.png")


def test_annotation_error_pickles():
    err = pickle.loads(pickle.dumps(AnnotationError("ann", ["a.png: bad", "b.png: worse"])))
    assert err.problems == ["a.png: bad", "b.png: worse"] and "2 problems in ann" in str(err)


def test_palette_masks_and_seed_latents(folder, backend, out):
    """Palette PNGs are read as indices; without .latent.npy the seed's latent is used."""
    for seed in SEEDS:
        im = Image.fromarray(label_mask(seed), mode="P")
        im.putpalette(palette().reshape(-1).tolist())
        im.save(folder / f"{sample_id(seed, -1)}.png")
        (folder / f"{sample_id(seed, -1)}.latent.npy").unlink()
    aset = import_annotations(folder, backend, out)
    np.testing.assert_array_equal(aset.masks, np.stack([label_mask(s) for s in SEEDS]))
    assert Image.open(folder / f"{sample_id(SEEDS[0], -1)}.png").mode == "P"


def test_class_conditional_round_trip(tmp_path, out):
    cond = make_backend(0, ConditionalBackend)
    manifest = sample_for_annotation(cond, [5], tmp_path / "ann", classes=[0, 2])
    assert manifest["id"].tolist() == ["c0000_s00000005", "c0002_s00000005"]
    fill_in(tmp_path / "ann")
    import_annotations(tmp_path / "ann", cond, out)
    aset = load_annotation_set(out)
    assert aset.classes.tolist() == [0, 2] and aset.seeds.tolist() == [5, 5]


# -- hand-out folders ---------------------------------------------------------------
def test_sample_for_annotation_is_deterministic(tmp_path, backend):
    a = sample_for_annotation(backend, SEEDS, tmp_path / "a")
    sample_for_annotation(backend, SEEDS, tmp_path / "b")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert len(files) == 2 * len(SEEDS) + 1
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    disk = pd.read_csv(tmp_path / "a" / "manifest.csv")
    assert list(disk.columns) == ["id", "seed", "class", "truncation", "noise", "generator_hash"]
    assert (disk["generator_hash"] == backend.generator_hash).all()
    assert disk["id"].tolist() == a["id"].tolist() == ["s00000003", "s00000001", "s00000004"]
    assert np.load(tmp_path / "a" / "s00000001.latent.npy").shape == (backend.z_dim,)


def test_sample_for_annotation_never_leaves_half_folders(tmp_path, backend, monkeypatch):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "s00000001.png").write_bytes(b"someone's work")
    with pytest.raises(FileExistsError):
        sample_for_annotation(backend, SEEDS, tmp_path / "taken")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ann.np, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        sample_for_annotation(backend, SEEDS, tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]

    monkeypatch.undo()
    (tmp_path / "empty").mkdir()  # e.g. made by a workflow manager beforehand: filled in place
    sample_for_annotation(backend, SEEDS, tmp_path / "empty")
    assert (tmp_path / "empty" / "manifest.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "taken"]


def test_sample_id():
    assert sample_id(7, -1) == "s00000007"
    assert sample_id(7, 12) == "c0012_s00000007"


# -- class-conditional tasks: samples per class -----------------------------------------
CLASSES = [2, 0, 1]


@pytest.fixture(scope="module")
def cond():
    return make_backend(0, ConditionalBackend)


@pytest.fixture(scope="module")
def pristine_per_class(tmp_path_factory, cond):
    d = tmp_path_factory.mktemp("per_class") / "ann"
    sample_for_annotation(cond, SEEDS[:2], d, classes=CLASSES)
    fill_in(d)
    return d


@pytest.fixture
def per_class(tmp_path, pristine_per_class):
    """A valid filled-in folder: seeds 3 and 1 for each of the classes 2, 0, 1."""
    return Path(shutil.copytree(pristine_per_class, tmp_path / "ann"))


def drop_rows(folder, ids):
    """Remove samples from a folder: their manifest rows and masks."""
    edit_manifest(folder, lambda df: df[~df["id"].isin(ids)])
    for i in ids:
        (folder / f"{i}.png").unlink()


def test_sample_for_annotation_per_class(tmp_path, cond, pristine_per_class):
    manifest = pd.read_csv(pristine_per_class / "manifest.csv")
    assert manifest["id"].tolist() == [sample_id(s, c) for c in CLASSES for s in SEEDS[:2]]
    assert manifest["class"].tolist() == [2, 2, 0, 0, 1, 1] and manifest["seed"].tolist() == [3, 1] * 3
    assert manifest["class"].value_counts().to_dict() == {0: 2, 1: 2, 2: 2}
    np.testing.assert_array_equal(np.load(pristine_per_class / "c0000_s00000001.latent.npy"),
                                  cond.draw_latents([1])[0])
    again = sample_for_annotation(cond, SEEDS[:2], tmp_path / "again", classes=CLASSES)
    assert again["id"].tolist() == manifest["id"].tolist()
    for f in sorted((tmp_path / "again").iterdir()):
        assert f.read_bytes() == (pristine_per_class / f.name).read_bytes(), f.name


def test_sample_for_annotation_checks_classes(tmp_path, cond, backend):
    with pytest.raises(ValueError, match="class-conditional: give a class per sample"):
        sample_for_annotation(cond, SEEDS, tmp_path / "a")
    with pytest.raises(ValueError, match=r"need 6 classes in \[0, 3\)"):
        sample_for_annotation(cond, SEEDS[:2], tmp_path / "b", classes=[0, 3, 1])
    with pytest.raises(ValueError, match="unconditional"):
        sample_for_annotation(backend, SEEDS, tmp_path / "c", classes=[0])
    with pytest.raises(ValueError, match="duplicate .seed, class. pairs: c0000_s00000003"):
        sample_for_annotation(cond, [3], tmp_path / "d", classes=[0, 0])
    assert list(tmp_path.iterdir()) == []


def test_per_class_import(per_class, cond, out):
    aset = import_annotations(per_class, cond, out, classes=[0, 1, 2], expected_per_class=2, expected_count=6)
    loaded = load_annotation_set(out)
    assert loaded.ids == aset.ids == pd.read_csv(per_class / "manifest.csv")["id"].tolist()
    assert loaded.classes.tolist() == [2, 2, 0, 0, 1, 1] and loaded.seeds.tolist() == [3, 1] * 3
    np.testing.assert_array_equal(loaded.masks, np.stack([label_mask(s) for s in [3, 1] * 3]))


PER_CLASS_CASES = {
    "class out of range": (
        lambda d: edit_manifest(d, lambda df: df.assign(**{"class": ["2", "2", "0", "0", "1", "3"]})), {},
        ["manifest.csv: line 7 (id 'c0001_s00000001'): class 3 is invalid for this generator"]),
    "class not an integer": (
        lambda d: edit_manifest(d, lambda df: df.assign(**{"class": ["2", "2", "zero", "0", "1", "1"]})), {},
        ["manifest.csv: line 4 (id 'c0000_s00000003'): class 'zero' is not an integer"]),
    "class not the task's": (lambda d: None, {"classes": [0, 1]},
                             ["manifest.csv: line 2 (id 'c0002_s00000003'): class 2 is not one of the task's "
                              "classes [0, 1]", "line 3 (id 'c0002_s00000001'): class 2 is not one"]),
    "missing class": (lambda d: drop_rows(d, ["c0000_s00000003", "c0000_s00000001"]), {"classes": [0, 1, 2]},
                      ["manifest.csv: no annotated samples of classes [0]"]),
    "too few of a class": (lambda d: drop_rows(d, ["c0001_s00000001"]), {"expected_per_class": 2},
                           ["manifest.csv: fewer than 2 annotated samples of classes 1 (1)"]),
    "too few of several": (lambda d: drop_rows(d, ["c0001_s00000001", "c0002_s00000003"]),
                           {"classes": [0, 1, 2], "expected_per_class": 2},
                           ["manifest.csv: fewer than 2 annotated samples of classes 1 (1), 2 (1)"]),
}


@pytest.mark.parametrize("case", list(PER_CLASS_CASES))
def test_bad_per_class_folder_is_rejected(case, per_class, cond, out):
    mutate, kwargs, needles = PER_CLASS_CASES[case]
    mutate(per_class)
    err = expect_failure(per_class, cond, out, *needles, **kwargs)
    assert len(err.problems) == len(needles) and all("\n" not in p for p in err.problems)


# -- validation: one case per problem ---------------------------------------------------
def _save(folder, name, array, mode=None):
    Image.fromarray(array, mode=mode).save(folder / name)


BAD_CASES = {
    "missing manifest": (lambda d: (d / "manifest.csv").unlink(), ["manifest.csv: missing"]),
    "missing labels": (lambda d: (d / "labels.yaml").unlink(), ["labels.yaml: missing"]),
    "missing columns": (lambda d: edit_manifest(d, lambda df: df.drop(columns=["class"])),
                        ["manifest.csv: missing required columns ['class']"]),
    "duplicate ids": (lambda d: edit_manifest(d, lambda df: pd.concat([df, df.iloc[[1]]])),
                      ["manifest.csv: duplicate ids ['s00000001']"]),
    "non-integer seed": (lambda d: edit_manifest(d, lambda df: df.assign(seed=["3", "x1", "4"])),
                         ["manifest.csv: line 3 (id 's00000001'): seed 'x1' is not an integer"]),
    "invalid class": (lambda d: edit_manifest(d, lambda df: df.assign(**{"class": ["-1", "2", "-1"]})),
                      ["manifest.csv: line 3 (id 's00000001'): class 2 is invalid", "unconditional"]),
    "other generator hash": (lambda d: edit_manifest(d, lambda df: df.assign(generator_hash="ab" * 32)),
                             ["manifest.csv: generator_hash abababababab", "made on another generator"]),
    "missing mask": (lambda d: (d / "s00000001.png").unlink(), ["s00000001.png: missing mask"]),
    "extra mask": (lambda d: _save(d, "s00000099.png", label_mask(0)),
                   ["s00000099.png: mask without a manifest row (extra file)"]),
    "corrupt png": (lambda d: (d / "s00000001.png").write_bytes(b"\x89PNG\r\n\x1a\nnonsense"),
                    ["s00000001.png: unreadable or corrupt PNG"]),
    "truncated png": (lambda d: (d / "s00000001.png").write_bytes((d / "s00000001.png").read_bytes()[:60]),
                      ["s00000001.png: unreadable or corrupt PNG"]),
    "rgb mask": (lambda d: _save(d, "s00000001.png", np.zeros((RES, RES, 3), np.uint8)),
                 ["s00000001.png: image mode RGB", "single-channel 8-bit (L) or palette (P)"]),
    "rgba mask": (lambda d: _save(d, "s00000001.png", np.zeros((RES, RES, 4), np.uint8)),
                  ["s00000001.png: image mode RGBA"]),
    "16-bit mask": (lambda d: _save(d, "s00000001.png", np.zeros((RES, RES), np.uint16)),
                    ["s00000001.png: image mode I;16", "single-channel"]),
    "wrong size": (lambda d: _save(d, "s00000001.png", np.zeros((8, 12), np.uint8)),
                   ["s00000001.png: wrong size: expected 16x16", "found 8x12"]),
    "labels out of range": (lambda d: _save(d, "s00000001.png", np.where(label_mask(1) == 3, 7, label_mask(1))
                                            .astype(np.uint8)),
                            ["s00000001.png: label ids out of range 0..3 (ignore 255): 7 (64 px)"]),
    "latent wrong shape": (lambda d: np.save(d / "s00000001.latent.npy", np.zeros((2, 16), np.float32)),
                           ["s00000001.latent.npy: latent must be float [16] or [1, 16]"]),
    "latent of another seed": (lambda d: np.save(d / "s00000001.latent.npy", np.load(d / "s00000003.latent.npy")),
                               ["s00000001.latent.npy: latent disagrees with the latent of seed 1"]),
    "tampered image": (lambda d: _save(d, "s00000001.image.png",
                                       np.clip(np.asarray(Image.open(d / "s00000001.image.png"), np.int16) + 9, 0,
                                               255).astype(np.uint8)),
                       ["s00000001.image.png: differs from the re-rendered image by up to 9/255"]),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_folder_is_rejected(case, folder, backend, out):
    mutate, needles = BAD_CASES[case]
    mutate(folder)
    expect_failure(folder, backend, out, *needles)


def test_settings_and_counts_are_checked(folder, backend, out):
    expect_failure(folder, backend, out, "manifest.csv: 3 annotated samples, expected at least 4", expected_count=4)
    expect_failure(folder, backend, out, "manifest.csv: truncation '1.0' (ids s00000003, s00000001, s00000004) "
                   "differs from the import setting 0.5", "s00000003.image.png: differs", truncation=0.5)
    expect_failure(folder, make_backend(1), out, "made on another generator", "s00000004.image.png: differs")


def test_only_masked_imports_the_rows_with_masks(folder, backend, out, caplog):
    (folder / "s00000001.png").unlink()  # a rendered sample that could not be annotated
    expect_failure(folder, backend, out, "s00000001.png: missing mask")
    with caplog.at_level("WARNING"):
        aset = import_annotations(folder, backend, out, only_masked=True)
    assert aset.ids == [sample_id(s, -1) for s in SEEDS if s != 1]
    np.testing.assert_array_equal(aset.masks, np.stack([label_mask(s) for s in SEEDS if s != 1]))
    assert "importing the 2 of 3 manifest rows that have a mask; 1 without one skipped" in caplog.text
    out.unlink()
    expect_failure(folder, backend, out, "manifest.csv: 2 annotated samples, expected at least 3", only_masked=True,
                   expected_count=3)  # the counts are of the rows kept
    for s in SEEDS:
        (folder / f"{sample_id(s, -1)}.png").unlink(missing_ok=True)
    expect_failure(folder, backend, out, "manifest.csv: no row has a mask", only_masked=True)


def test_redrawn_noise_is_caught_by_the_image(tmp_path, backend, out):
    """Images annotated under random noise (the original DatasetGAN drift) do not
    match a constant-noise re-render, even with no noise column to tell."""
    d = tmp_path / "ann"
    sample_for_annotation(backend, SEEDS, d, noise="random")
    fill_in(d)
    edit_manifest(d, lambda df: df.drop(columns=["noise"]))
    err = expect_failure(d, backend, out, "s00000001.image.png: differs from the re-rendered image")
    assert all("image.png" in p for p in err.problems)


def test_all_problems_are_reported_at_once(folder, backend, out):
    (folder / "s00000003.png").unlink()
    _save(folder, "s00000001.png", np.zeros((RES, RES, 3), np.uint8))
    edit_manifest(folder, lambda df: df.assign(seed=["3", "1", "four"]))
    _save(folder, "extra.png", label_mask(0))
    err = expect_failure(folder, backend, out, "s00000003.png: missing mask", "s00000001.png: image mode RGB",
                         "seed 'four' is not an integer", "extra.png: mask without a manifest row")
    assert len(err.problems) == 4


# -- LabelMe ----------------------------------------------------------------------
def _labelme(shapes, h=RES, w=RES):
    return json.dumps({"imageHeight": h, "imageWidth": w, "shapes": [
        {"label": label, "points": pts, "shape_type": kind} for label, kind, pts in shapes]})


def test_labelme_json_is_rasterized(folder, backend, out):
    (folder / "s00000001.png").unlink()
    (folder / "s00000001.json").write_text(_labelme([
        ("body", "rectangle", [[5, 7], [2, 3]]),
        ("head", "polygon", [[4, 4], [10, 4], [10, 10], [4, 10]]),  # drawn later, wins the overlap
        ("tail", "circle", [[12, 12], [12, 14]]),
        ("__ignore__", "rectangle", [[0, 15], [1, 15]]),
    ]))
    aset = import_annotations(folder, backend, out)
    want = np.zeros((RES, RES), np.uint8)
    want[3:8, 2:6] = 1
    want[4:11, 4:11] = 2
    want[15, 0:2] = 255
    got = aset.masks[aset.ids.index("s00000001")]
    tail = got == 3
    assert tail[12, 12] and tail[10, 12] and tail[12, 14] and not tail[12, 15] and not tail[9, 12]
    got = np.where(tail, 0, got)
    np.testing.assert_array_equal(got, want)


def test_labelme_problems(folder, backend, out):
    (folder / "s00000001.png").unlink()
    (folder / "s00000001.json").write_text(_labelme([("wing", "polygon", [[0, 0], [3, 0], [3, 3]]),
                                                     ("body", "line", [[0, 0], [3, 3]]),
                                                     ("body", "rectangle", [[0, 0]])]))
    (folder / "s00000003.png").unlink()
    (folder / "s00000003.json").write_text(_labelme([], h=8))
    expect_failure(folder, backend, out, "s00000001.json: shape 0: label 'wing' is not in labels.yaml",
                   "s00000001.json: shape 1: shape_type 'line' is not supported",
                   "s00000001.json: shape 2: a rectangle needs exactly 2 points",
                   "s00000003.json: wrong size: expected 16x16", "found 8x16")


# -- CVAT "Segmentation mask 1.1" exports and napari/numpy label arrays -----------------
# labelmap.txt as CVAT 2.x writes it, its labels in another order than labels.yaml's
CVAT_LABELMAP = [("background", (0, 0, 0)), ("tail", (250, 50, 83)), ("body", (51, 221, 255)),
                 ("head", (255, 204, 51))]
VOC_BORDER = (224, 224, 192)


def _write_labelmap(folder, entries):
    (folder / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
        f"{name}:{','.join(map(str, rgb))}::\n" for name, rgb in entries))


def _coloured(mask, mode, entries=CVAT_LABELMAP, names=LABELS):
    """``mask`` (labels.yaml ids, 255 = ignore) painted as CVAT paints it: a palette PNG
    indexed in labelmap order (VOC's border colour at 255), or the same colours in RGB."""
    index = np.full(256, 255, np.uint8)
    for i, (name, _) in enumerate(entries):
        index[names.index(name)] = i
    palette = np.zeros((256, 3), np.uint8)
    palette[:len(entries)] = [rgb for _, rgb in entries]
    palette[255] = VOC_BORDER
    im = Image.fromarray(index[mask], mode="P")
    im.putpalette(palette.ravel().tolist())
    return im if mode == "P" else im.convert("RGB")


def _cvat_export(folder, mode="P", suffix=".image.png", entries=CVAT_LABELMAP, masks=None):
    """Replace the folder's masks by a CVAT export of them unpacked into it."""
    _write_labelmap(folder, entries)
    for d in ("SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        (folder / d).mkdir(parents=True)
    ids = [sample_id(s, -1) for s in SEEDS]
    for sid, seed in zip(ids, SEEDS):
        (folder / f"{sid}.png").unlink()
        mask = label_mask(seed) if masks is None else masks[sid]
        _coloured(mask, mode, entries).save(folder / "SegmentationClass" / f"{sid}{suffix}")
        _coloured(np.zeros_like(mask), "P", entries).save(folder / "SegmentationObject" / f"{sid}{suffix}")
    (folder / "ImageSets/Segmentation/default.txt").write_text("".join(
        f"{sid}{suffix.removesuffix('.png')}\n" for sid in ids))


@pytest.mark.parametrize("mode, suffix", [("P", ".image.png"), ("RGB", ".image.png"), ("P", ".png")])
def test_cvat_export_is_imported(folder, backend, out, mode, suffix):
    _cvat_export(folder, mode, suffix)
    im = Image.open(folder / "SegmentationClass" / f"s00000001{suffix}")
    assert im.mode == mode and im.format == "PNG"
    aset = import_annotations(folder, backend, out)
    assert aset.ids == [sample_id(s, -1) for s in SEEDS]
    np.testing.assert_array_equal(aset.masks, np.stack([label_mask(s) for s in SEEDS]))


def test_cvat_background_is_label_zero_by_its_role(folder, backend, out):
    """Black is the first label where labels.yaml names it background-like, under
    either name or none in the labelmap."""
    entries = [e for e in CVAT_LABELMAP if e[0] != "background"]
    _cvat_export(folder, "RGB", entries=[("background", (0, 0, 0))] + entries)
    labels = LabelSet(("_background_", *LABELS[1:]))
    aset = import_annotations(folder, backend, out, labels=labels)
    np.testing.assert_array_equal(aset.masks, np.stack([label_mask(s) for s in SEEDS]))
    out.unlink()
    _write_labelmap(folder, entries)  # black no longer named in the labelmap
    aset = import_annotations(folder, backend, out, labels=labels)
    np.testing.assert_array_equal(aset.masks, np.stack([label_mask(s) for s in SEEDS]))
    out.unlink()
    renamed = LabelSet(("sky", *LABELS[1:]))  # not background-like: black must be named
    expect_failure(folder, backend, out, "SegmentationClass/s00000001.image.png: colours not in labelmap.txt: "
                   "(0,0,0) (64 px)", labels=renamed)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.uint16])
def test_npy_label_arrays_are_imported(folder, backend, out, dtype):
    for s in SEEDS:
        sid = sample_id(s, -1)
        (folder / f"{sid}.png").unlink()
        np.save(folder / f"{sid}.npy", label_mask(s).astype(dtype))
    aset = import_annotations(folder, backend, out)
    np.testing.assert_array_equal(aset.masks, np.stack([label_mask(s) for s in SEEDS]))


def test_cvat_and_npy_problems_are_reported_at_once(folder, backend, out):
    masks = {sample_id(s, -1): label_mask(s) for s in SEEDS}
    _cvat_export(folder, "RGB", masks=masks)
    _write_labelmap(folder, CVAT_LABELMAP + [("wing", (9, 9, 9)), ("beak", (1, 2))])
    rgb = np.asarray(Image.open(folder / "SegmentationClass/s00000003.image.png")).copy()
    rgb[2, 3:5] = (7, 7, 7)
    rgb[5, 5] = (9, 9, 9)  # wing's colour: its labelmap line is the problem, not the pixel
    Image.fromarray(rgb).save(folder / "SegmentationClass/s00000003.image.png")
    Image.fromarray(label_mask(1), mode="L").save(folder / "SegmentationClass/s00000001.image.png")
    (folder / "SegmentationClass/s00000004.image.png").unlink()
    np.save(folder / "s00000004.npy", label_mask(4).astype(np.float32))
    np.save(folder / "s00000099.npy", label_mask(0))
    _coloured(label_mask(0), "P").save(folder / "SegmentationClass/s00000098.png")
    err = expect_failure(
        folder, backend, out,
        "labelmap.txt: line 6: label 'wing' is not in labels.yaml ['background', 'body', 'head', 'tail']",
        "labelmap.txt: line 7: expected 'name:r,g,b:parts:actions'",
        "SegmentationClass/s00000003.image.png: colours not in labelmap.txt: (7,7,7) (2 px)",
        "SegmentationClass/s00000001.image.png: image mode L: CVAT/VOC masks are palette (P) or RGB PNGs",
        "s00000004.npy: must be a 2-D integer array of label ids [H, W], got float32 [16, 16]",
        "s00000099.npy: mask without a manifest row (extra file)",
        "SegmentationClass/s00000098.png: mask without a manifest row (extra file)")
    assert len(err.problems) == 7


NPY_CASES = {
    "3-D": (np.zeros((RES, RES, 3), np.int32), "got int32 [16, 16, 3]"),
    "bool": (np.zeros((RES, RES), bool), "s00000001.npy: must be a 2-D integer array of label ids [H, W], got bool"),
    "negative": (np.full((RES, RES), -1, np.int32), "s00000001.npy: label ids must lie in 0..255, found -1..-1"),
    "too large": (np.full((RES, RES), 300, np.int64), "s00000001.npy: label ids must lie in 0..255, found 300..300"),
    "out of range": (np.full((RES, RES), 7, np.uint8), "s00000001.npy: label ids out of range 0..3 (ignore 255)"),
    "wrong size": (np.zeros((8, RES), np.uint8), "s00000001.npy: wrong size: expected 16x16"),
    "pickled": (np.array([{"a": 1}], dtype=object), "s00000001.npy: unreadable .npy"),
}


@pytest.mark.parametrize("case", list(NPY_CASES))
def test_bad_npy_masks(folder, backend, out, case):
    array, needle = NPY_CASES[case]
    (folder / "s00000001.png").unlink()
    np.save(folder / "s00000001.npy", array)
    err = expect_failure(folder, backend, out, needle)
    assert len(err.problems) == 1


def test_one_mask_per_sample_across_formats(folder, backend, out):
    np.save(folder / "s00000001.npy", label_mask(1))
    masks = {sample_id(s, -1): label_mask(s) for s in SEEDS}
    _cvat_export(folder, masks=masks)
    fill_in(folder)
    (folder / "SegmentationClass/s00000004.image.png").unlink()
    (folder / "labelmap.txt").unlink()
    err = expect_failure(folder, backend, out,
                         "s00000003.image.png: s00000003.png and SegmentationClass/s00000003.image.png exist",
                         "SegmentationClass/s00000001.image.png: s00000001.png, s00000001.npy and "
                         "SegmentationClass/s00000001.image.png exist; keep one mask",
                         "labelmap.txt: missing")
    assert len(err.problems) == 3


# -- labels.yaml ------------------------------------------------------------------
@pytest.mark.parametrize("doc, needle", [
    ({"names": ["background"]}, "need 2 to 255 label names, got 1"),
    ({"names": ["a", "b", "a"]}, "duplicate label names ['a']"),
    ({"names": ["a", ""]}, "non-empty strings"),
    ({"names": ["a", "b"], "ignore_index": 1}, "ignore_index 1 must lie outside the label ids 0..1"),
    ({"names": ["a", "b"], "ignore_index": 256}, "<= 255"),
    ({"labels": ["a", "b"]}, "must be a mapping with a 'names' list"),
])
def test_bad_labels_yaml(tmp_path, doc, needle):
    path = tmp_path / "labels.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(AnnotationError, match="labels.yaml") as info:
        load_labels(path)
    assert needle in str(info.value)


def test_labels_yaml(tmp_path):
    (tmp_path / "labels.yaml").write_text("names: [background, body]\nignore_index: 254\n")
    assert load_labels(tmp_path / "labels.yaml") == LabelSet(("background", "body"), 254)


def test_labels_argument_overrides_folder(folder, backend, out):
    (folder / "labels.yaml").unlink()
    aset = import_annotations(folder, backend, out, labels=LabelSet(tuple(LABELS)))
    assert aset.labels.names == tuple(LABELS)


# -- loading HDF5 sets ------------------------------------------------------------
def test_load_annotation_set_checks_the_file(folder, backend, out, tmp_path):
    import_annotations(folder, backend, out)
    data = out.read_bytes()

    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(AnnotationError, match="truncated.h5"):
        load_annotation_set(truncated)

    missing = tmp_path / "missing.h5"
    missing.write_bytes(data)
    with h5py.File(missing, "a") as f:
        del f["masks"]
    with pytest.raises(AnnotationError, match=r"missing.h5:\n  missing dataset 'masks'"):
        load_annotation_set(missing)

    short = tmp_path / "short.h5"
    short.write_bytes(data)
    with h5py.File(short, "a") as f:
        seeds = f["seeds"][:2]
        del f["seeds"]
        f["seeds"] = seeds
    with pytest.raises(AnnotationError, match="short.h5") as info:
        load_annotation_set(short)
    assert "datasets differ in length" in str(info.value) and "'seeds': 2" in str(info.value)


def test_vqgan_samples_are_annotated_and_imported_with_their_code_latents(tmp_path):
    """Annotating a VQGAN's own samples (without reuse): the folder holds each sample's code
    grid, drawn by the prior per (seed, class); import checks it exactly and keeps int64 codes."""
    from helpers import tiny_vqgan

    backend = tiny_vqgan()
    df = sample_for_annotation(backend, [3, 4], tmp_path / "ann", classes=[0, 1])
    for sid in df["id"]:
        image = np.asarray(Image.open(tmp_path / "ann" / f"{sid}.image.png"))
        Image.fromarray((image.mean(-1) > 127).astype(np.uint8)).save(tmp_path / "ann" / f"{sid}.png")
    (tmp_path / "ann" / "labels.yaml").write_text("names: [background, object]\n")
    ann = import_annotations(tmp_path / "ann", backend, tmp_path / "ann.h5", classes=[0, 1])
    assert ann.latents.dtype == np.int64 and ann.latents.shape == (4, 64)
    for i, (seed, c) in enumerate(zip(ann.seeds, ann.classes)):
        np.testing.assert_array_equal(ann.latents[i], backend.sample_codes([seed], [c]).reshape(-1))
    # a code grid that is not the prior's draw of its (seed, class) is refused, naming the file
    first = df["id"][0]
    codes = np.load(tmp_path / "ann" / f"{first}.latent.npy")
    np.save(tmp_path / "ann" / f"{first}.latent.npy", (codes + 1) % 32)
    with pytest.raises(AnnotationError, match=f"{first}.latent.npy: latent disagrees with the latent of seed 3"):
        import_annotations(tmp_path / "ann", backend, tmp_path / "bad.h5", classes=[0, 1])
    np.save(tmp_path / "ann" / f"{first}.latent.npy", codes.astype(np.float32))
    with pytest.raises(AnnotationError, match=r"latent must be integer \[8, 8\] or \[1, 8, 8\]"):
        import_annotations(tmp_path / "ann", backend, tmp_path / "bad.h5", classes=[0, 1])
    assert not (tmp_path / "bad.h5").exists()
