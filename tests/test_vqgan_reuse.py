"""Annotation reuse for a VQGAN (labelfactory.annotations.reuse) on a tiny random-weight VQGAN and
a tiny toy-world annotation set: codes and reconstructions, PSNR against numpy, masks kept,
the set's int64 code latents through HDF5, feature extraction and the conv interpreter,
the annotator's agreement, the warning, and one-line errors for bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from labelfactory.toybench import world as toyworld
from labelfactory.annotations.annotation_set import AnnotationSet, load_annotation_set
from labelfactory.annotations.labels import LabelSet
from labelfactory.toybench.annotator import Annotator, UNet
from labelfactory.features import FeatureStore, extract_features
from labelfactory.generators.base import images_to_uint8
from labelfactory.interpreters import TrainingData
from labelfactory.interpreters.conv import ConvInterpreterConfig, train_conv_ensemble
from labelfactory.annotations.reuse import resize_annotations, reuse_annotation_file, reuse_annotations

from helpers import TINY_VQGAN_CODES as N_EMBED, tiny_vqgan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

def toy_annotations(size: int = 16, per_class: int = 3) -> AnnotationSet:
    """Toy-world cars and faces with their object masks, as a BigGAN task's annotation set."""
    rendered = [toyworld.render_batch(range(per_class), c, size) for c in (0, 1)]
    classes, seeds = np.repeat([0, 1], per_class), np.tile(np.arange(per_class), 2)
    ids = [f"c{c:04d}_s{s:08d}" for c, s in zip(classes, seeds)]
    return AnnotationSet(ids=ids, seeds=seeds.astype(np.int64), classes=classes.astype(np.int32),
                         latents=np.random.default_rng(0).standard_normal((len(ids), 16)).astype(np.float32),
                         images=np.concatenate([r[0] for r in rendered]),
                         masks=np.concatenate([r[2] for r in rendered]),
                         labels=LabelSet(("background", "object")), generator_hash="biggan-hash",
                         truncation=1.0, noise="const")


@pytest.fixture(scope="module")
def reused():
    ann, backend = toy_annotations(), tiny_vqgan()
    with torch.no_grad():
        new, report = reuse_annotations(ann, backend, min_psnr=0.0)
    return ann, backend, new, report


def test_round_trip_keeps_masks_and_classes(reused):
    ann, backend, new, report = reused
    n = len(ann)
    assert new.latents.dtype == np.int64 and new.latents.shape == (n, 64)
    assert new.latents.min() >= 0 and new.latents.max() < N_EMBED
    assert new.images.shape == ann.images.shape and new.images.dtype == np.uint8
    np.testing.assert_array_equal(new.masks, ann.masks)
    np.testing.assert_array_equal(new.classes, ann.classes)
    np.testing.assert_array_equal(new.seeds, ann.seeds)
    assert new.ids == ann.ids and new.labels == ann.labels
    assert new.generator_hash == backend.generator_hash != ann.generator_hash
    assert list(report.columns) == ["id", "class", "psnr", "annotator_agreement", "annotator_object_iou"]
    assert report["id"].tolist() == ann.ids and report["class"].tolist() == ann.classes.tolist()
    assert report["annotator_agreement"].isna().all()


def test_codes_and_reconstruction_match_the_module(reused):
    ann, backend, new, _ = reused
    x = torch.from_numpy(ann.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        codes = backend.module.encode(x)
        image, _ = backend.module.decode(codes)
    np.testing.assert_array_equal(new.latents, codes.reshape(len(codes), -1).numpy())
    np.testing.assert_array_equal(new.images, images_to_uint8(image))


def test_psnr_matches_numpy(reused):
    ann, _, new, report = reused
    want = [10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
            for a, b in zip(ann.images, new.images)]
    np.testing.assert_allclose(report["psnr"].to_numpy(), want, rtol=1e-12)


def test_code_latents_survive_hdf5_and_render_the_reconstructions(reused, tmp_path):
    _, backend, new, _ = reused
    new.save(tmp_path / "ann.h5")
    back = load_annotation_set(tmp_path / "ann.h5")
    assert back.latents.dtype == np.int64
    np.testing.assert_array_equal(back.latents, new.latents)
    rendered = images_to_uint8(torch.from_numpy(backend.render(back.latents, back.classes)))
    np.testing.assert_array_equal(rendered, new.images)


def test_features_extract_and_the_conv_interpreter_trains(reused, tmp_path):
    _, backend, new, _ = reused
    layers = extract_features(backend, new.ids, new.latents, tmp_path / "f.h5", classes=new.classes,
                              expected_images=new.images)
    assert layers == ["mid", "up1", "up0"]
    store = FeatureStore.open(tmp_path / "f.h5")
    assert store.shapes == {"mid": (64, 8, 8), "up1": (64, 8, 8), "up0": (32, 16, 16)}
    assert store.generator_hash == backend.generator_hash
    cfg = ConvInterpreterConfig(iterations=2, channels=(8, 8, 8), num_members=1)
    ens = train_conv_ensemble(TrainingData(store, new.masks, 2, generator_hash=new.generator_hash), cfg)
    assert not ens.conditional


def test_annotator_agreement_against_its_labels():
    ann, backend = toy_annotations(), tiny_vqgan()
    torch.manual_seed(0)
    annotator = Annotator(UNet(len(toyworld.global_part_labels()), width=8, levels=2).eval())
    new, report = reuse_annotations(ann, backend, annotator, min_psnr=0.0, annotator_classes=toyworld.CLASSES)
    for c in (0, 1):
        idx = np.flatnonzero(ann.classes == c)
        a = annotator.label(ann.images[idx], c)
        b = annotator.label(new.images[idx], c)
        np.testing.assert_allclose(report["annotator_agreement"].to_numpy()[idx], (a == b).mean((1, 2)))
        inter, union = ((a > 0) & (b > 0)).sum((1, 2)), ((a > 0) | (b > 0)).sum((1, 2))
        want = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        np.testing.assert_allclose(report["annotator_object_iou"].to_numpy()[idx], want)


def test_low_psnr_is_named_in_a_warning(caplog):
    ann, backend = toy_annotations(per_class=1), tiny_vqgan()
    with caplog.at_level(logging.WARNING, logger="labelfactory.annotations.reuse"):
        reuse_annotations(ann, backend, min_psnr=200.0)
    assert "2 of 2 reconstructions below 200.0 dB" in caplog.text and all(i in caplog.text for i in ann.ids)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="labelfactory.annotations.reuse"):
        reuse_annotations(ann, backend, min_psnr=0.0)
    assert caplog.text == ""


def _one_line_error(fn, match):
    with pytest.raises(ValueError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)


def test_bad_input_is_refused_in_one_line(reused, tiny_backend, tmp_path):
    ann, backend, new, _ = reused
    rgba = AnnotationSet(**{**vars(ann), "images": np.concatenate([ann.images, ann.images[..., :1]], -1)})
    _one_line_error(lambda: reuse_annotations(rgba, backend), r"uint8 \[N, H, W, 3\]")
    wide = AnnotationSet(**{**vars(ann), "images": ann.images[:, :8], "masks": ann.masks[:, :8]})
    _one_line_error(lambda: reuse_annotations(wide, backend), "annotated images are 8x16; the VQGAN works on square")
    unmasked = AnnotationSet(**{**vars(ann), "masks": ann.masks[:, :8]})
    _one_line_error(lambda: reuse_annotations(unmasked, backend), "masks .* do not match")
    _one_line_error(lambda: reuse_annotations(ann, tiny_backend), "needs a VQGAN")
    bad = new.latents.copy()
    bad[0, 5] = N_EMBED
    _one_line_error(lambda: extract_features(backend, new.ids, bad, tmp_path / "f.h5", classes=new.classes),
                    rf"code indices must be in \[0, {N_EMBED}\)")
    _one_line_error(lambda: extract_features(backend, new.ids, bad[:, :60], tmp_path / "f.h5", classes=new.classes),
                    "code grids must have shape")


def test_annotations_at_another_resolution_are_resized_first():
    """BigGAN-512 annotations for a 256-pixel VQGAN: here 32 px for a 16-px VQGAN. Images are
    2x2 block means (area), masks every second pixel (nearest), both computed with numpy."""
    ann, backend = toy_annotations(size=32, per_class=2), tiny_vqgan()
    blocks = ann.images.reshape(len(ann), 16, 2, 16, 2, 3).astype(np.float64).mean((2, 4))
    images, masks = resize_annotations(ann.images, ann.masks, 16)
    np.testing.assert_array_equal(images, np.round(blocks).astype(np.uint8))
    np.testing.assert_array_equal(masks, ann.masks[:, ::2, ::2])
    new, report = reuse_annotations(ann, backend, min_psnr=0.0)
    assert new.images.shape == (len(ann), 16, 16, 3) and new.resolution == 16
    np.testing.assert_array_equal(new.masks, masks)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        codes = backend.module.encode(x)
    np.testing.assert_array_equal(new.latents, codes.reshape(len(codes), -1).numpy())
    want = 10 * np.log10(255.0**2 / ((images.astype(np.float64) - new.images) ** 2).reshape(len(ann), -1).mean(1))
    np.testing.assert_allclose(report["psnr"].to_numpy(), want, rtol=1e-12)


def test_reuse_file_writes_the_set_the_report_and_its_summary(reused, tmp_path):
    ann, backend, new, report = reused
    ann.save(tmp_path / "source.h5")
    threshold = float(np.median(report["psnr"]))
    summary = reuse_annotation_file(tmp_path / "source.h5", backend, tmp_path / "out.h5", tmp_path / "reuse.csv",
                                    tmp_path / "reuse.json", min_psnr=threshold)
    back = load_annotation_set(tmp_path / "out.h5")
    np.testing.assert_array_equal(back.latents, new.latents)
    np.testing.assert_array_equal(back.masks, ann.masks)
    written = __import__("pandas").read_csv(tmp_path / "reuse.csv")
    np.testing.assert_allclose(written["psnr"], report["psnr"])
    on_disk = __import__("json").loads((tmp_path / "reuse.json").read_text())
    assert on_disk == summary and summary["n"] == len(ann)
    assert summary["psnr_mean"] == pytest.approx(report["psnr"].mean())
    assert summary["psnr_min"] == pytest.approx(report["psnr"].min())
    assert summary["below_min_psnr"] == [i for i, v in zip(ann.ids, report["psnr"]) if v < threshold]
    assert summary["annotator_agreement_mean"] is None
    assert summary["device"]["kind"] == backend.device.type and summary["device"]["torch"] == torch.__version__
