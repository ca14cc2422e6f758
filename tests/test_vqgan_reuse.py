"""Annotation reuse for a VQGAN (labelfactory.vqgan_reuse) on a tiny random-weight VQGAN and
a tiny toy-world annotation set: codes and reconstructions, PSNR against numpy, masks kept,
the set's int64 code latents through HDF5, feature extraction and the conv interpreter,
the annotator's agreement, the warning, and one-line errors for bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from labelfactory import toyworld
from labelfactory.annotations import AnnotationSet, LabelSet, load_annotation_set
from labelfactory.annotator import Annotator, UNet
from labelfactory.features import FeatureStore, extract_features
from labelfactory.generators.base import images_to_uint8
from labelfactory.generators.taming_prior import PriorConfig
from labelfactory.generators.vqgan import VQGAN, DDConfig, VQGANBackend, VQGANConfig
from labelfactory.interpreters import ConvInterpreterConfig, train_conv_ensemble
from labelfactory.vqgan_reuse import reuse_annotations

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_EMBED = 32


def tiny_vqgan(resolution: int = 16, seed: int = 0) -> VQGANBackend:
    """A random VQGAN with an 8x8 code grid (at 16 px) and a prior over two classes."""
    torch.manual_seed(seed)
    dd = DDConfig(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), in_channels=3,
                  resolution=resolution, z_channels=32, double_z=False)
    grid = resolution // 2
    prior = PriorConfig(vocab_size=N_EMBED, block_size=grid * grid, n_layer=1, n_head=1, n_embd=8, n_classes=2)
    module = VQGAN(VQGANConfig(8, N_EMBED, dd, prior))
    return VQGANBackend(module, module.cfg.to_dict())


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
    ens = train_conv_ensemble(store, new.masks, 2, cfg, generator_hash=new.generator_hash)
    assert not ens.conditional


def test_annotator_agreement_against_its_labels():
    ann, backend = toy_annotations(), tiny_vqgan()
    torch.manual_seed(0)
    annotator = Annotator(UNet(len(toyworld.global_part_labels()), width=8, levels=2).eval())
    new, report = reuse_annotations(ann, backend, annotator, min_psnr=0.0)
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
    with caplog.at_level(logging.WARNING, logger="labelfactory.vqgan_reuse"):
        reuse_annotations(ann, backend, min_psnr=200.0)
    assert "2 of 2 reconstructions below 200.0 dB" in caplog.text and all(i in caplog.text for i in ann.ids)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="labelfactory.vqgan_reuse"):
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
    small = toy_annotations(size=8, per_class=1)
    _one_line_error(lambda: reuse_annotations(small, backend), "annotated images are 8x8 but the VQGAN works at 16x16")
    _one_line_error(lambda: reuse_annotations(ann, tiny_vqgan(resolution=32)),
                    "annotated images are 16x16 but the VQGAN works at 32x32")
    unmasked = AnnotationSet(**{**vars(ann), "masks": ann.masks[:, :8]})
    _one_line_error(lambda: reuse_annotations(unmasked, backend), "masks .* do not match")
    _one_line_error(lambda: reuse_annotations(ann, tiny_backend), "needs a VQGAN")
    bad = new.latents.copy()
    bad[0, 5] = N_EMBED
    _one_line_error(lambda: extract_features(backend, new.ids, bad, tmp_path / "f.h5", classes=new.classes),
                    rf"code indices must be in \[0, {N_EMBED}\)")
    _one_line_error(lambda: extract_features(backend, new.ids, bad[:, :60], tmp_path / "f.h5", classes=new.classes),
                    "code grids must have shape")
