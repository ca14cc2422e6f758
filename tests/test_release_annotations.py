"""BigDatasetGAN's released annotations: both layouts read unchanged, every bad file named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.annotations.importing import import_annotations
from labelfactory.annotations.handout import sample_for_annotation
from labelfactory.annotations.labels import AnnotationError, LabelSet
from labelfactory.generators.base import images_to_uint8
from labelfactory.generators.biggan import BigGANBackend, BigGANConfig, BigGANGenerator, truncated_normal
from labelfactory.annotations.bigdatasetgan_release import import_release_annotations, release_layout, saved_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RES, Z_DIM = 32, 32
SYNSETS = {0: "n01440764", 1: "n01443537", 2: "n01484850"}  # ImageNet's first three classes
SAMPLES = [(0, 0), (0, 1), (2, 0), (2, 1)]  # (class, k)
GAN = "biggan512"


@pytest.fixture(scope="module")
def big():
    torch.manual_seed(0)
    cfg = BigGANConfig(resolution=RES, ch=4, dim_z=Z_DIM, shared_dim=8, n_classes=3, attention=())
    return BigGANBackend(BigGANGenerator(cfg), cfg.to_dict())


def name(cls: int, k: int) -> str:
    return f"{SYNSETS[cls]}_{cls}_{k}"


def object_mask(cls: int, k: int) -> np.ndarray:
    """A binary mask (1 = object) that differs per sample."""
    return ((np.add.outer(np.arange(RES), 2 * np.arange(RES)) + 5 * cls + k) % 7 < 3).astype(np.uint8)


def write_release(root: Path, backend, layout: str, latents: dict, masks: dict) -> Path:
    """The release's files for ``{(cls, k): z [z_dim]}`` and ``{(cls, k): mask}``:
    nested as its README's ``data/`` (PNG masks 0/255, images written with
    torchvision's ``save_image(normalize=True)`` as ``prepare_biggan_images.py``
    does), or flat as its first loader's (``.npy`` masks, ``classes.json``)."""
    for (cls, k), z in latents.items():
        n, synset = name(cls, k), SYNSETS[cls]
        if layout == "nested":
            lat, lab, img = (root / d / GAN / synset for d in ("latents", "annotations", "images"))
        else:
            lat, lab, img = root / "latent", root / "label", root / "image"
        for d in (lat, lab, img):
            d.mkdir(parents=True, exist_ok=True)
        np.save(lat / f"{n}.npy", z[None].astype(np.float32))
        if layout == "nested":
            Image.fromarray(masks[cls, k] * 255).save(lab / f"{n}.png")
        else:
            np.save(lab / f"{n}.npy", masks[cls, k])
        raw = torch.from_numpy(backend.render(z[None], [cls]))
        torchvision.utils.save_image(raw, img / f"{n}.png", normalize=True)
    if layout == "nested":  # the annotated real photos, which are no generator's samples
        (root / "annotations" / "real-random-list.txt").write_text("n01440764/n01440764_real_12\n")
        (root / "images" / "real-random" / "n01440764").mkdir(parents=True)
        (root / "images" / "real-random" / "n01440764" / "n01440764_real_12.jpg").write_bytes(b"not ours")
    else:
        (root / "classes.json").write_text(json.dumps({str(c): s for c, s in SYNSETS.items()}))
    return root


def release_latents() -> dict:
    z = truncated_normal(range(len(SAMPLES)), Z_DIM, truncation=0.4)
    return {ck: z[i] for i, ck in enumerate(SAMPLES)}


@pytest.fixture(scope="module", params=["nested", "flat"])
def pristine(request, tmp_path_factory, big):
    return write_release(tmp_path_factory.mktemp(request.param) / "data", big, request.param, release_latents(),
                         {ck: object_mask(*ck) for ck in SAMPLES})


@pytest.fixture
def release(tmp_path, pristine):
    """A valid release folder (each layout in turn), fresh for each test to spoil."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


@pytest.fixture
def out(tmp_path):
    (tmp_path / "out").mkdir()
    return tmp_path / "out" / "annotations.h5"


def files(release: Path, cls: int, k: int) -> tuple[Path, Path, Path]:
    """Latent, mask and image of a sample, whichever the layout."""
    n = name(cls, k)
    if release_layout(release) == "nested":
        return tuple(release / d / GAN / SYNSETS[cls] / f"{n}.{ext}"
                     for d, ext in (("latents", "npy"), ("annotations", "png"), ("images", "png")))
    return release / "latent" / f"{n}.npy", release / "label" / f"{n}.npy", release / "image" / f"{n}.png"


def rel(release: Path, path: Path) -> str:
    return path.relative_to(release).as_posix()


# -- reading the release ----------------------------------------------------------
def test_layout_is_told_by_its_folders(release, tmp_path):
    assert release_layout(release) == ("nested" if (release / "latents").is_dir() else "flat")
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "manifest.csv").write_text("id,seed,class\n")
    assert release_layout(tmp_path / "ours") is None


def test_release_is_imported_unchanged(release, big, out):
    aset = import_annotations(release, big, out, labels=LabelSet(("background", "object")))
    latents = release_latents()
    for a in (aset, load_annotation_set(out)):
        assert a.ids == [name(*ck) for ck in SAMPLES]
        assert a.classes.tolist() == [c for c, _ in SAMPLES] and a.seeds.tolist() == [-1] * len(SAMPLES)
        np.testing.assert_array_equal(a.latents, np.stack([latents[ck] for ck in SAMPLES]))
        np.testing.assert_array_equal(a.masks, np.stack([object_mask(*ck) for ck in SAMPLES]))
        rendered = big.render(a.latents, a.classes)
        np.testing.assert_array_equal(a.images, images_to_uint8(torch.from_numpy(rendered)))
        assert a.labels.names == ("background", "object") and a.generator_hash == big.generator_hash
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_saved_image_is_torchvisions(big, tmp_path):
    raw = big.render(release_latents()[0, 1][None], [0])
    torchvision.utils.save_image(torch.from_numpy(raw), tmp_path / "x.png", normalize=True)
    np.testing.assert_array_equal(saved_image(raw[0]), np.asarray(Image.open(tmp_path / "x.png")))


def test_classes_pick_a_subset_and_counts_are_checked(release, big, out):
    aset = import_release_annotations(release, big, out, classes=[2], expected_per_class=2)
    assert aset.ids == [name(2, 0), name(2, 1)] and aset.classes.tolist() == [2, 2]
    with pytest.raises(AnnotationError) as info:
        import_release_annotations(release, big, out, classes=[1, 2], expected_per_class=3, expected_count=5)
    where = rel(release, files(release, 0, 0)[1].parent.parent) if release_layout(release) == "nested" else "label"
    assert info.value.problems == [f"{where}: 2 annotated samples, expected at least 5",
                                   f"{where}: no annotated samples of classes [1]",
                                   f"{where}: fewer than 3 annotated samples of classes 2 (2)"]


def test_same_samples_import_alike_from_either_layout(tmp_path, big):
    """A per-class folder sampled from BigGAN at truncation 0.4 and the same samples
    in the release's layout give the same annotation set: the latents are the
    seeds' truncated z, rendered as given."""
    ann = tmp_path / "ann"
    manifest = sample_for_annotation(big, [0, 1], ann, truncation=0.4, classes=[0, 2])
    (ann / "labels.yaml").write_text("names: [background, object]\n")
    for sid, cls, seed in manifest[["id", "class", "seed"]].itertuples(index=False):
        Image.fromarray(object_mask(cls, seed), mode="L").save(ann / f"{sid}.png")
    ours = import_annotations(ann, big, tmp_path / "ours.h5", truncation=0.4, classes=[0, 2], expected_per_class=2)
    latents = {(c, s): np.load(ann / f"{i}.latent.npy") for i, c, s in manifest[["id", "class", "seed"]].values}
    release = write_release(tmp_path / "data", big, "nested", latents, {ck: object_mask(*ck) for ck in latents})
    theirs = import_annotations(release, big, tmp_path / "theirs.h5", truncation=0.4)
    np.testing.assert_array_equal(np.asarray(list(latents.values())), big.draw_latents([0, 1, 0, 1], truncation=0.4))
    for key in ("classes", "latents", "images", "masks"):
        np.testing.assert_array_equal(getattr(ours, key), getattr(theirs, key))


# -- bad files: one line each, naming the file ------------------------------------------
def _save_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def _move(release: Path, cls: int, k: int, to_cls: int) -> None:
    """Rename a sample's files to another class id (same synset in the name)."""
    for f in files(release, cls, k):
        f.rename(f.with_name(f.name.replace(f"_{cls}_{k}", f"_{to_cls}_{k}")))


def _mask_array(release, cls, k, values):
    """Rewrite a sample's mask with ``values`` (background, object) in its own format."""
    mask = files(release, cls, k)[1]
    m = object_mask(cls, k) * values[1] + (1 - object_mask(cls, k)) * values[0]
    if mask.suffix == ".png":
        _save_png(mask, m.astype(np.uint8))
    else:
        np.save(mask, m)


BAD = {
    "unreadable latent": (lambda d: files(d, 0, 1)[0].write_bytes(b"\x93NUMPY garbage"),
                          lambda d: [f"{rel(d, files(d, 0, 1)[0])}: unreadable .npy"]),
    "latent without batch axis": (lambda d: np.save(files(d, 0, 1)[0], np.zeros(Z_DIM, np.float32)),
                                  lambda d: [f"{rel(d, files(d, 0, 1)[0])}: latent must be float [1, 32] "
                                             "(BigGAN's z, as released), got float32 [32]"]),
    "latent of another size": (lambda d: np.save(files(d, 2, 0)[0], np.zeros((1, 16), np.float32)),
                               lambda d: [f"{rel(d, files(d, 2, 0)[0])}: latent must be float [1, 32]"]),
    "mask of another size": (lambda d: (np.save(files(d, 0, 0)[1], np.zeros((16, 16), np.uint8))
                                        if files(d, 0, 0)[1].suffix == ".npy"
                                        else _save_png(files(d, 0, 0)[1], np.zeros((16, 16), np.uint8))),
                             lambda d: [f"{rel(d, files(d, 0, 0)[1])}: wrong size: expected 32x32 (HxW, the "
                                        "generator's resolution), found 16x16"]),
    "mask not binary": (lambda d: _mask_array(d, 2, 1, (0, 128)),
                        lambda d: [f"{rel(d, files(d, 2, 1)[1])}: mask values [0, 128] are not binary ("
                                   + ("0/1 or 0/255)" if files(d, 2, 1)[1].suffix == ".png" else "0/1)")]),
    "class not in classes.json": (
        lambda d: (d / "classes.json").write_text(json.dumps({"0": SYNSETS[0], "1": SYNSETS[1]})),
        lambda d: [f"{rel(d, files(d, 2, k)[0])}: class 2 is not in classes.json" for k in (0, 1)]),
    "class of another synset": (
        lambda d: (d / "classes.json").write_text(json.dumps({"0": SYNSETS[0], "2": "n09999999"})),
        lambda d: [f"{rel(d, files(d, 2, k)[0])}: class 2 is n09999999 in classes.json, not n01484850"
                   for k in (0, 1)]),
    "class of no generator class": (lambda d: _move(d, 2, 1, 7),
                                    lambda d: [f"{rel(d, files(d, 2, 1)[0]).replace('_2_1', '_7_1')}: class 7 is "
                                               "invalid for this generator"]),
    "latent without a mask": (lambda d: files(d, 0, 1)[1].unlink(),
                              lambda d: [f"{rel(d, files(d, 0, 1)[0])}: latent without a mask (no "
                                         f"{rel(d, files(d, 0, 1)[1].with_suffix(''))}.png or .npy)"]),
    "mask without a latent": (lambda d: files(d, 2, 0)[0].unlink(),
                              lambda d: [f"{rel(d, files(d, 2, 0)[1])}: mask without a latent (no "
                                         f"{rel(d, files(d, 2, 0)[0])})"]),
    "two masks": (lambda d: shutil.copy(files(d, 0, 0)[1], files(d, 0, 0)[1].with_suffix(
        ".npy" if files(d, 0, 0)[1].suffix == ".png" else ".png")),
                  lambda d: ["exist; keep one mask"]),
    "foreign file name": (lambda d: [f.rename(f.with_name("sample" + f.suffix)) for f in files(d, 0, 0)],
                          lambda d: [f"{rel(d, files(d, 0, 0)[0].with_name('sample.npy'))}: file name must be "
                                     "<synset>_<class>_<k> (the release's naming)"]),
    "image of another render": (
        lambda d: _save_png(files(d, 2, 0)[2], np.asarray(Image.open(files(d, 2, 1)[2]))),
        lambda d: [f"{rel(d, files(d, 2, 0)[2])}: differs from the re-rendered image by up to"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_release_file_is_named(case, release, big, out):
    mutate, expected = BAD[case]
    mutate(release)
    with pytest.raises(AnnotationError) as info:
        import_annotations(release, big, out)
    needles = expected(release)
    assert len(info.value.problems) == len(needles), info.value.problems
    for needle, problem in zip(needles, info.value.problems):
        assert needle in problem and "\n" not in problem, f"{needle!r} not in {problem!r}"
    assert list(out.parent.iterdir()) == []


def test_layout_specific_problems(release, big, out):
    if release_layout(release) == "flat":
        (release / "classes.json").unlink()
        needle = "classes.json: missing (the release's flat layout names its classes there)"
    else:
        shutil.copytree(release / "latents" / GAN, release / "latents" / "vqgan")
        shutil.copytree(release / "annotations" / GAN, release / "annotations" / "vqgan")
        needle = "latents: need one generator folder (as biggan512) in both annotations/ and latents/, found " \
                 "['biggan512', 'vqgan']"
    with pytest.raises(AnnotationError) as info:
        import_release_annotations(release, big, out, labels=LabelSet(("background", "dog", "cat")))
    assert info.value.problems == ["labels: the release's masks are binary, so they need 2 label names "
                                   "(background, object), got ['background', 'dog', 'cat']", needle]


def test_all_problems_are_reported_at_once(release, big, out):
    files(release, 0, 1)[1].unlink()
    np.save(files(release, 2, 0)[0], np.zeros(3))
    _move(release, 2, 1, 5)
    with pytest.raises(AnnotationError) as info:
        import_release_annotations(release, big, out, classes=[0, 2, 5], expected_per_class=2)
    msg = str(info.value)
    for needle in ("latent without a mask", "latent must be float [1, 32]", "class 5 is invalid",
                   "no annotated samples of classes [5]", "fewer than 2 annotated samples of classes 2 (1)"):
        assert needle in msg, msg
    assert msg.startswith(f"5 problems in {release}") and all("\n" not in p for p in info.value.problems)


def test_nested_file_must_lie_in_its_synset_folder(tmp_path, big, out):
    release = write_release(tmp_path / "data", big, "nested", release_latents(),
                            {ck: object_mask(*ck) for ck in SAMPLES})
    for f in files(release, 2, 1):
        f.rename(f.parent.with_name(SYNSETS[0]) / f.name)
    with pytest.raises(AnnotationError) as info:
        import_annotations(release, big, out)
    assert info.value.problems == [f"latents/{GAN}/{SYNSETS[0]}/{name(2, 1)}.npy: the file name's synset "
                                   f"{SYNSETS[2]} differs from its folder {SYNSETS[0]}"]
