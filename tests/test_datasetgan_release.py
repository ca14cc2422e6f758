"""DatasetGAN's release on the workflow: a task's generator (average latent, image view) and the
import of the release's annotation folders (re-render check, shifted latent file, class merges),
on format-true fixtures made with the tiny StyleGAN1 ``g_all`` checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.annotations.importing import import_annotations
from labelfactory.annotations.labels import AnnotationError, LabelSet
from labelfactory.config import ConfigError, WorkflowConfig, validate_config
from labelfactory.annotations.datasetgan_release import ADECAR12, CAR20, CELEBAMASK8, FACE34, MERGES, merge_masks
from labelfactory.generators.base import images_to_uint8
from labelfactory.generators.loading import load_generator
from labelfactory.generators.view import ImageView, load_task_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).parent / "data"
PT, AVG = DATA / "stylegan1_s32.for_g_all.pt", DATA / "stylegan1_s32_avg_latent.npy"
PSI = 0.7  # the release's truncation
# face-like (32 px rendered, resized to 16) and car-like (rows 2:14 of that kept): a 12x16 image
IMAGE = {"size": 16, "crop": [2, 14, 0, 16]}
SEEDS = [0, 1, 2, 4]  # latents whose renders differ clearly from each other's


@pytest.fixture(scope="module")
def g():
    return load_task_generator(PT, truncation=PSI, average_latent=AVG, image=IMAGE)


def release_latents(n: int = len(SEEDS)) -> np.ndarray:
    return np.stack([np.random.RandomState(s).randn(16) for s in SEEDS[:n]]).astype(np.float32)


def car_mask(i: int) -> np.ndarray:
    """A Car-20 label map of the 12x16 crop that differs per sample (regions of >= 30 px)."""
    m = np.zeros((12, 16), np.int64)
    m[:, : 8 + i] = 3 + i  # car_body, car_lights, door, fender
    m[6:, 4:] = 19  # windshield
    return m


def write_release(root: Path, g, latents: np.ndarray, image_latents: np.ndarray) -> Path:
    """The release's ``<domain>_processed`` folder: ``image_mask<i>.npy`` label maps, ``image_<i>.jpg``
    (the render of ``image_latents[i]`` on the task's view, JPEG as released) and
    ``latent_stylegan1.npy`` (``latents``)."""
    root.mkdir(parents=True)
    images = images_to_uint8(torch.from_numpy(g.render(image_latents, None, PSI, "none")))
    for i, img in enumerate(images):
        np.save(root / f"image_mask{i}.npy", car_mask(i))
        Image.fromarray(ImageView.from_dict(IMAGE).cut(img, 16, channels_last=True)).save(
            root / f"image_{i}.jpg", quality=95)
    np.save(root / "latent_stylegan1.npy", latents)
    return root


def test_view_resizes_the_image_and_keeps_the_taps(g):
    plain = load_task_generator(PT, truncation=PSI, average_latent=AVG)
    z = torch.from_numpy(release_latents())
    with torch.no_grad():
        a, b = plain.synthesize(z, truncation=PSI, noise="none"), g.synthesize(z, truncation=PSI, noise="none")
    assert g.resolution == 16 and plain.resolution == 32 and g.generator_hash == plain.generator_hash
    torch.testing.assert_close(b.images, F.interpolate(a.images, size=16, mode="bilinear", align_corners=False))
    assert all(torch.equal(b.features[k], v) for k, v in a.features.items())  # native taps, upsampled by the interpreter
    view = ImageView.from_dict(IMAGE)
    assert view.shape(32) == (12, 16) and view.cut(np.zeros((1, 16, 16, 3)), 16, channels_last=True).shape == (1, 12, 16, 3)
    padded = view.pad(np.ones((12, 16), np.uint8), 16, 255)
    assert (padded[2:14] == 1).all() and (padded[:2] == 255).all() and (padded[14:] == 255).all()
    with pytest.raises(ValueError, match=r"crop \[0, 20, 0, 16\] is not a box"):
        load_task_generator(PT, image={"size": 16, "crop": [0, 20, 0, 16]})


def test_truncation_needs_the_average_latent_of_a_stylegan1_checkpoint():
    with pytest.raises(ValueError, match=r"^tasks.car.average_latent: truncation 0.7 needs the average latent"):
        load_task_generator(PT, truncation=0.7, task="car")
    assert load_task_generator(PT, truncation=1.0).average_latent is None
    z = release_latents(1)
    want = load_generator(PT).set_average_latent(np.load(AVG)).render(z, None, PSI, "none")
    np.testing.assert_array_equal(load_task_generator(PT, truncation=PSI, average_latent=AVG).render(z, None, PSI, "none"),
                                  want)


def test_average_latent_is_refused_for_checkpoints_with_their_own(tmp_path, tiny_backend):
    from labelfactory.generators.loading import write_canonical

    write_canonical(tmp_path / "g.safetensors", tiny_backend, {})
    with pytest.raises(ValueError, match="this stylegan2 checkpoint has its own"):
        load_task_generator(tmp_path / "g.safetensors", average_latent=AVG)


def _task_config(**task) -> dict:
    return {"checkpoints": {"car": {"url": "car.pt", "format": "datasetgan-stylegan1"}},
            "tasks": {"car": {"checkpoint": "car", "annotations": "ann", **task}}}


def test_config_names_a_missing_average_latent_and_a_bad_crop():
    with pytest.raises(ConfigError) as info:
        validate_config(_task_config(truncation=0.7, image={"size": 512, "crop": [64, 600, 0, 512]}),
                        check_files=False)
    assert str(info.value).splitlines()[1:] == [
        "  tasks.car.average_latent: truncation 0.7 needs the average latent, which datasetgan-stylegan1 "
        "checkpoints do not hold (give the release's avg_latent_stylegan1.npy)",
        "  tasks.car.image.crop: [64, 600, 0, 512] is not [top, bottom, left, right] with top < bottom and "
        "left < right inside the 512x512 image"]
    cfg = validate_config(_task_config(truncation=0.7, average_latent="avg.npy", noise="none",
                                       image={"size": 512, "crop": [64, 448, 0, 512]},
                                       annotation={"merge": "car20-to-adecar12"}), check_files=False)
    task = WorkflowConfig.from_dict(cfg).tasks["car"]
    assert (task.average_latent, task.image, task.annotation.merge) == (
        "avg.npy", {"size": 512, "crop": [64, 448, 0, 512]}, "car20-to-adecar12")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, g):
    z = release_latents()
    return write_release(tmp_path_factory.mktemp("release") / "car_processed", g, z, z)


@pytest.fixture
def out(tmp_path):
    return tmp_path / "annotations.h5"


def test_release_folder_is_imported_on_the_view(pristine, g, out):
    aset = import_annotations(pristine, g, out, truncation=PSI, noise="none", labels=LabelSet(CAR20))
    for a in (aset, load_annotation_set(out)):
        assert a.ids == [f"image_{i}" for i in range(len(SEEDS))] and a.seeds.tolist() == [-1] * len(SEEDS)
        np.testing.assert_array_equal(a.latents, release_latents())
        assert a.images.shape == (4, 16, 16, 3) and a.masks.shape == (4, 16, 16)  # the whole grid ...
        np.testing.assert_array_equal(a.masks[:, 2:14], np.stack([car_mask(i) for i in range(4)]))
        assert (a.masks[:, :2] == 255).all() and (a.masks[:, 14:] == 255).all()  # ... labelled in the crop only
        assert (a.truncation, a.noise) == (PSI, "none")


def test_small_regions_are_background_and_masks_are_resized_as_the_release(tmp_path, pristine, g, out):
    root = Path(shutil.copytree(pristine, tmp_path / "car_processed"))
    m = car_mask(0)
    m[0, 0] = 11  # a 1-px mirror: an annotation artefact
    np.save(root / "image_mask0.npy", np.repeat(np.repeat(m, 2, 0), 2, 1))  # annotated at twice the size
    aset = import_annotations(root, g, out, truncation=PSI, noise="none", labels=LabelSet(CAR20))
    m[0, 0] = 0  # background, as the release's prepare_data sets it
    np.testing.assert_array_equal(aset.masks[0, 2:14], m)


def test_class_merge_maps_onto_the_coarser_labels(pristine, g, out):
    aset = import_annotations(pristine, g, out, truncation=PSI, noise="none", labels=LabelSet(ADECAR12),
                              merge="car20-to-adecar12")
    want = {3: "car_body", 4: "head light", 5: "door", 6: "car_body", 19: "wind shield"}
    for i in range(4):
        got = aset.masks[i, 2:14]
        for src, name in want.items():
            assert (got[car_mask(i) == src] == ADECAR12.index(name)).all()
    with pytest.raises(AnnotationError, match="merge car20-to-adecar12 gives the labels"):
        import_annotations(pristine, g, out, truncation=PSI, noise="none", labels=LabelSet(CAR20),
                           merge="car20-to-adecar12")


def test_merge_tables():
    car = MERGES["car20-to-adecar12"][2]
    assert len(car) == 20 and car[0] == 0 and car[CAR20.index("tailLight")] == ADECAR12.index("tail light")
    assert car[CAR20.index("roof")] == ADECAR12.index("car_body")
    face = dict(zip(FACE34, (CELEBAMASK8[t] for t in MERGES["face34-to-celebamask8"][2])))
    assert (face["head***eye***iris"], face["head***eyebrow"], face["head***nose***nostril"], face["head***neck"],
            face["head***mouth***teeth"], face["head***hair***sideburns"], face["head***cheek"]) == (
        "eye", "brow", "nose", "background", "mouth", "hair", "skin")
    np.testing.assert_array_equal(merge_masks(np.array([[0, 14]]), "car20-to-adecar12"), [[0, 5]])


def test_latent_file_shifted_by_one_is_reported_per_image(tmp_path, g, out):
    """As the release's issue #41: the latent file has one latent before image 0's."""
    z = release_latents()
    extra = np.random.RandomState(7).randn(1, 16).astype(np.float32)
    root = write_release(tmp_path / "car_processed", g, np.concatenate([extra, z[:-1]]), z)
    with pytest.raises(AnnotationError) as info:
        import_annotations(root, g, out, truncation=PSI, noise="none", labels=LabelSet(CAR20))
    lines = info.value.problems
    assert [l.split(" (")[0] for l in lines[:3]] == [f"image_{i}.jpg: is the render of latent {i + 1} of "
                                                     "latent_stylegan1.npy" for i in range(3)]
    assert all(f"not of latent {i}" in l and "issue #41" in l for i, l in enumerate(lines[:3]))
    assert lines[3].startswith("image_3.jpg: differs from the re-render of latent 3")  # its latent is not in the file
    assert lines[4] == "latent_stylegan1.npy: every mismatched image matches latent i+1"
    assert not out.exists()


def test_bad_release_files_are_named(tmp_path, pristine, g, out):
    root = Path(shutil.copytree(pristine, tmp_path / "car_processed"))
    np.save(root / "image_mask1.npy", np.full((12, 16), 25))
    np.save(root / "image_mask2.npy", np.zeros((10, 10), np.int64))
    (root / "image_mask3.npy").rename(root / "image_mask5.npy")
    np.save(root / "latent_stylegan1.npy", release_latents()[:2])
    with pytest.raises(AnnotationError) as info:
        import_annotations(root, g, out, truncation=PSI, noise="none", labels=LabelSet(CAR20), expected_count=5)
    assert info.value.problems == [
        "image_mask3.npy: missing (the release numbers its masks 0..3, paired with the latents by that index)",
        "car_processed: 4 annotated samples, expected at least 5",
        "image_mask1.npy: label ids [25] are not in 0..19",
        "image_mask2.npy: 10x10 does not have the aspect of the task's 12x16 image (HxW; see the task's `image` crop)",
        "latent_stylegan1.npy: 2 latents for 4 masks (image_mask0..3.npy)"]


def test_latents_and_merge_are_refused_for_other_folders(tmp_path, g, out):
    (tmp_path / "ours").mkdir()
    with pytest.raises(AnnotationError, match="are for folders of DatasetGAN's release"):
        import_annotations(tmp_path / "ours", g, out, merge="car20-to-adecar12")


class _Brightness:
    """A interpreter of two classes from the 32x32 tap, upsampled to the image grid."""

    num_classes = 2

    def member_probabilities(self, features, classes=None):
        x = F.interpolate(features["32x32.epi2"].mean(1, keepdim=True), size=16, mode="bilinear").sigmoid()
        return torch.cat([x, 1 - x], 1)[None].expand(2, -1, -1, -1, -1)


def test_synthesis_keeps_the_crop(tmp_path, g):
    from labelfactory.synthesis.shards import ShardSettings, read_samples, synthesize_shard

    info = synthesize_shard(g, _Brightness(), tmp_path / "s.h5", [3, 5],
                            settings=ShardSettings(truncation=PSI, noise="none"), progress=False)
    images, labels = read_samples(info.path, [0, 1])
    z = np.stack([np.random.RandomState(s).randn(16) for s in (3, 5)]).astype(np.float32)
    full = images_to_uint8(torch.from_numpy(g.render(z, None, PSI, "none")))
    assert images.shape == (2, 12, 16, 3) and labels.shape == (2, 12, 16)
    np.testing.assert_array_equal(images, full[:, 2:14])
