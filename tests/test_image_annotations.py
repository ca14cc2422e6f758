"""Interpreters of a diffusion generator trained on annotated *images* (annotation.source: images).

The toy GAN tasks' annotation folders, as they are, are the annotated images; a tiny
diffusers UNet (random weights, 16 px, built here) computes their features, an MLP
ensemble trains on them, and a 3-step DDIM shard is labelled by it. Also: the diffusion
model's own samples annotated the usual way, and the one-line refusals.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
import torch
from PIL import Image

from labelfactory.annotations.annotation_set import load_annotation_set
from labelfactory.annotations.importing import import_annotations, import_image_annotations
from labelfactory.annotations.labels import AnnotationError
from labelfactory.annotations.reuse import resize_annotations
from labelfactory.features import FeatureStore, extract_features, extract_image_features
from labelfactory.generators.view import load_task_generator
from labelfactory.interpreters import INTERPRETERS, TrainingData, load_interpreter
from labelfactory.synthesis.shard_job import synthesize_with_interpreter
from labelfactory.synthesis.shards import ShardSettings
from labelfactory.synthesis.uncertainty import vote_labels

from helpers import REPO

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DIFFUSION = {"sampler": "ddim", "sampling_steps": 3, "eta": 0.0, "feature_steps": [2, 10], "feature_noise_seed": 7}
FOLDERS = {None: REPO / "config/annotations/toy-car", 4: REPO / "config/annotations/toy-objects"}


def _pipeline(path, num_classes: int | None):
    """A tiny UNet2DModel pipeline folder (16 px, 50 training steps) at ``path``."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
                                 num_class_embeds=num_classes)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=50)).save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=[None, 4], ids=["toy-car", "toy-objects"])
def model(request, tmp_path_factory):
    """(the pipeline folder, its classes: None or 4, the GAN task's annotation folder)."""
    return _pipeline(tmp_path_factory.mktemp("pipe") / "ddpm", request.param), request.param, FOLDERS[request.param]


def _backend(path):
    return load_task_generator(path, diffusion=DIFFUSION, task="t")


def test_annotated_images_train_the_interpreter_that_labels_a_shard(model, tmp_path):
    path, num_classes, folder = model
    backend = _backend(path)
    ann = import_image_annotations(folder, backend, tmp_path / "annotations.h5")
    stored = load_annotation_set(tmp_path / "annotations.h5")
    assert stored.source == "images" and stored.generator_hash == backend.generator_hash
    assert stored.latents.shape == (len(stored), 0) and (stored.seeds == -1).all()
    assert stored.images.shape[1:] == (16, 16, 3) and len(stored) == (16 if num_classes is None else 20)
    first = stored.ids[0]
    image = np.array(Image.open(folder / f"{first}.image.png").convert("RGB"))[None]
    mask = np.array(Image.open(folder / f"{first}.png"))[None]
    want_image, want_mask = resize_annotations(image, mask, 16)  # the GAN's 32 px sample, at 16 px
    assert np.array_equal(stored.images[0], want_image[0]) and np.array_equal(stored.masks[0], want_mask[0])
    if num_classes:
        assert sorted(set(stored.classes.tolist())) == [0, 1, 2, 3]

    layers = extract_image_features(backend, ann.ids, ann.images, tmp_path / "features.h5", classes=ann.classes)
    store = FeatureStore.open(tmp_path / "features.h5")
    assert layers == list(backend.feature_shapes()) and store.layers[0] == "t2.mid_block"
    # the taps of the image noised with the task's noise: its seed 7's shared [1, 3, 16, 16] draw
    x = torch.from_numpy(ann.images[:2]).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = None if num_classes is None else torch.from_numpy(ann.classes[:2]).long()
    noise = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = backend.image_features(x, noise, y, [10], ["up_blocks.1"])["t10.up_blocks.1"][1].numpy()
    got = store.read(ann.ids[1], ["t10.up_blocks.1"])["t10.up_blocks.1"].astype(np.float32)
    assert np.abs(got - want).max() <= 2e-3 * max(1.0, np.abs(want).max())  # float16 storage

    data = TrainingData.from_annotations(store, ann)
    mlp = INTERPRETERS.get("mlp")
    interpreter = mlp.fit(data, mlp.config_class(num_members=2, max_batches=600, eval_every=50, holdout_pixels=512))
    interpreter.save(tmp_path / "interpreter.safetensors")
    # trained on the images' features, it labels those images better than their most frequent label does
    feats = {l: torch.from_numpy(np.stack([store.read(i, [l])[l] for i in ann.ids])).float() for l in store.layers}
    labelled = ann.masks != ann.labels.ignore_index
    predicted = vote_labels(interpreter.member_probabilities(feats)).numpy()
    accuracy = (predicted == ann.masks)[labelled].mean()
    majority = np.bincount(ann.masks[labelled]).max() / labelled.sum()
    assert accuracy > majority + 0.05, (accuracy, majority)

    if num_classes is None:  # ddpm-segmentation's evaluation: the interpreter labels "real" images itself
        _the_interpreter_scores_real_images(backend, interpreter, ann, tmp_path)
    else:
        _a_conditional_model_labels_real_images_of_one_class(backend, interpreter, ann)

    seeds = [100, 101, 102]
    classes = None if num_classes is None else [1, 2, 3]
    synthesize_with_interpreter(backend, tmp_path / "interpreter.safetensors", tmp_path / "shard.h5", seeds, classes,
                                ShardSettings(batch_size=2))
    with h5py.File(tmp_path / "shard.h5") as f:
        images, labels = f["images"][()], f["labels"][()]
    # the shard's labels are the interpreter's vote on the DDIM samples' taps
    z = backend.draw_latents(seeds)
    rendered = backend.render_features(z, classes)
    loaded = load_interpreter(None, tmp_path / "interpreter.safetensors")
    probs = loaded.member_probabilities({k: torch.from_numpy(v) for k, v in rendered.items()})
    assert np.array_equal(labels, vote_labels(probs).numpy())
    sample = ((np.clip(backend.render(z, classes), -1, 1) + 1) * 127.5 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.array_equal(images, sample)


def _the_interpreter_scores_real_images(backend, interpreter, ann, tmp_path):
    """score_interpreter on a `folder` dataset of the annotated images: its confusion is the members'
    vote on the taps of each image (stored as PNG, so exactly the annotation set's pixels) against its mask."""
    from labelfactory.downstream.interpreter_test import InterpreterSegmenter, score_interpreter
    from labelfactory.downstream.real import RealDataSpec

    root = tmp_path / "real"
    for split in ("train", "test"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i, (image, mask) in enumerate(zip(ann.images, ann.masks)):
            Image.fromarray(image).save(root / split / "images" / f"{i:02d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:02d}.png")
    result = score_interpreter(backend, interpreter, tmp_path / "annotations.h5",
                               RealDataSpec(type="folder", path=str(root)), tmp_path / "interpreter_test.json")
    x = torch.from_numpy(ann.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        votes = vote_labels(interpreter.member_probabilities(backend.image_taps(x))).numpy()
    labelled = ann.masks != ann.labels.ignore_index
    want = np.zeros((5, 5), np.int64)
    np.add.at(want, (ann.masks[labelled], votes[labelled]), 1)
    assert np.array_equal(np.array(result["confusion"]), want) and result["protocol"] == "interpreter"
    assert result["pixel_accuracy"] == pytest.approx((votes == ann.masks)[labelled].mean())
    with pytest.raises(ValueError, match="real images are 8x8, the diffusion model takes 16x16"):
        InterpreterSegmenter(backend, interpreter)(torch.zeros((1, 3, 8, 8)))


def _a_conditional_model_labels_real_images_of_one_class(backend, interpreter, ann):
    """A single-class task on a class-conditional model: every real image is taken as its class."""
    from labelfactory.downstream.interpreter_test import InterpreterSegmenter

    with pytest.raises(ValueError, match="with 4 classes and no class"):
        InterpreterSegmenter(backend, interpreter)
    segmenter = InterpreterSegmenter(backend, interpreter, cls=2)
    x = torch.from_numpy(ann.images[:4]).permute(0, 3, 1, 2).float() / 127.5 - 1
    got = segmenter(((x + 1) / 2 - segmenter.mean) / segmenter.std).argmax(1)
    with torch.no_grad():
        want = vote_labels(interpreter.member_probabilities(backend.image_taps(x, torch.full((4,), 2))))
        other = vote_labels(interpreter.member_probabilities(backend.image_taps(x, torch.full((4,), 0))))
    assert (got == want).float().mean() > 0.99 and (want != other).any()


def test_keypoints_of_annotated_images_follow_the_resize(model, tmp_path):
    """Keypoint files beside annotated 32 px images: in the frame of the images resized to 16 px."""
    path, num_classes, folder = model
    ann_dir = shutil.copytree(folder, tmp_path / "ann")
    labels = yaml.safe_load((ann_dir / "labels.yaml").read_text())
    (ann_dir / "labels.yaml").write_text(yaml.safe_dump({**labels, "keypoints": {"names": ["p"]}}))
    ids = pd.read_csv(ann_dir / "manifest.csv")["id"].tolist()
    for i, sid in enumerate(ids):
        (ann_dir / f"{sid}.keypoints.json").write_text(json.dumps({"keypoints": [i, 31, 2]}))
    stored = import_image_annotations(ann_dir, _backend(path), tmp_path / "annotations.h5")
    want = np.array([[[(i + 0.5) / 2 - 0.5, 15.25, 2]] for i in range(len(ids))], np.float32)
    np.testing.assert_allclose(load_annotation_set(tmp_path / "annotations.h5").keypoints.keypoints, want)
    assert stored.keypoints.ids == ids


def test_the_diffusion_models_own_samples_annotated(model, tmp_path):
    """annotation.source: samples on a diffusion model: the hand-out's samples re-rendered from their
    seeds on import, and their features those of the samples (``image_taps``)."""
    from labelfactory.annotations.handout import sample_for_annotation

    path, num_classes, _ = model
    backend = _backend(path)
    classes = None if num_classes is None else [3]
    handout = sample_for_annotation(backend, [5, 6], tmp_path / "ann", classes=classes)
    for sid in handout["id"]:
        image = np.asarray(Image.open(tmp_path / "ann" / f"{sid}.image.png"))
        Image.fromarray((image.mean(-1) > 127).astype(np.uint8)).save(tmp_path / "ann" / f"{sid}.png")
    (tmp_path / "ann" / "labels.yaml").write_text("names: [dark, bright]\n")
    ann = import_annotations(tmp_path / "ann", backend, tmp_path / "annotations.h5", classes=classes)
    assert ann.source == "samples" and ann.latents.shape == (2, 3 * 16 * 16)
    extract_features(backend, ann.ids, ann.latents, tmp_path / "f.h5", classes=ann.classes,
                     expected_images=ann.images)
    x = torch.from_numpy(backend.render(ann.latents.reshape(2, 3, 16, 16), ann.classes if num_classes else None))
    with torch.no_grad():
        taps = backend.image_taps(x.clamp(-1, 1), torch.from_numpy(ann.classes).long() if num_classes else None)
    got = FeatureStore.open(tmp_path / "f.h5").read(ann.ids[1], ["t2.mid_block"])["t2.mid_block"].astype(np.float32)
    want = taps["t2.mid_block"][1].numpy()
    assert np.abs(got - want).max() <= 2e-3 * max(1.0, np.abs(want).max())


def test_a_gan_cannot_take_annotated_images(tiny_backend, tmp_path):
    with pytest.raises(AnnotationError) as e:
        import_image_annotations(FOLDERS[None], tiny_backend, tmp_path / "a.h5")
    (line,) = str(e.value).strip().splitlines()[-1:]
    assert "need a diffusion generator" in line and "stylegan2" in line
    with pytest.raises(Exception, match="need a diffusion generator"):
        extract_image_features(tiny_backend, ["a"], np.zeros((1, 16, 16, 3), np.uint8), tmp_path / "f.h5")
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "f.h5").exists()


def test_config_refuses_annotated_images_for_a_gan(tmp_path):
    from labelfactory.config import ConfigError, WorkflowConfig, validate_config

    def config(fmt, **task):
        return {"checkpoints": {"g": {"url": "g.pt", "format": fmt}},
                "tasks": {"t": {"checkpoint": "g", "annotations": str(FOLDERS[None]),
                                "annotation": {"source": "images"}, **task}}}

    for fmt in ("auto", "guided-diffusion", "diffusers"):
        task = WorkflowConfig.from_dict(validate_config(config(fmt), check_files=False)).tasks["t"]
        assert task.annotation.source == "images"
    with pytest.raises(ConfigError) as e:
        validate_config(config("rosinality"), check_files=False)
    assert str(e.value).splitlines()[1].strip() == (
        "tasks.t.annotation.source: images is for diffusion generators, which compute features of any image; "
        "a rosinality checkpoint computes them from latents (use samples)")
    with pytest.raises(ConfigError, match=r"invalid configuration \(1 problem\):\n  tasks.t.image: annotated images"):
        validate_config(config("auto", image={"size": 32}), check_files=False)
    with pytest.raises(ConfigError) as e:
        validate_config(config("biggan-pytorch", downstream={"score_interpreter": True}), check_files=False)
    assert str(e.value).splitlines()[2].strip() == (
        "tasks.t.downstream.score_interpreter: is for diffusion generators, which compute features of any image; "
        "a biggan-pytorch checkpoint computes them from latents")


def test_bad_annotated_images_are_each_one_line(tmp_path):
    path = _pipeline(tmp_path / "ddpm", None)
    ann = tmp_path / "ann"
    shutil.copytree(FOLDERS[None], ann)
    ids = [line.split(",")[0] for line in (ann / "manifest.csv").read_text().splitlines()[1:]]
    (ann / f"{ids[0]}.image.png").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(ann / f"{ids[1]}.png")
    Image.fromarray(np.zeros((32, 24, 3), np.uint8)).save(ann / f"{ids[2]}.image.png")
    with pytest.raises(AnnotationError) as e:
        import_image_annotations(ann, _backend(path), tmp_path / "a.h5")
    problems = str(e.value).splitlines()[1:]
    assert [p.strip() for p in problems] == [
        f"{ids[0]}.image.png: missing (the annotated image of its mask)",
        f"{ids[1]}.png: 8x8 (HxW) but its image {ids[1]}.image.png is 32x32",
        f"{ids[2]}.image.png: 32x24 (HxW) is not square; crop it and its mask to a square",
    ]
    assert not (tmp_path / "a.h5").exists()


def test_ddpm_segmentations_dataset_folder_as_it_is(tmp_path):
    """ddpm-segmentation's ``datasets/<name>/real/train``: ``<name>.png``/``.jpg`` beside ``<name>.npy``, no
    manifest, in sorted order; labels from the task. A stray mask and an image without one are named."""
    from labelfactory.annotations.labels import LabelSet

    backend = _backend(_pipeline(tmp_path / "ddpm", None))
    folder = tmp_path / "train"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = {"b": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "a": rng.integers(0, 256, (16, 16, 3),
                                                                                          dtype=np.uint8)}
    masks = {"b": rng.integers(0, 3, (32, 32)).astype(np.int64), "a": rng.integers(0, 3, (16, 16)).astype(np.int64)}
    Image.fromarray(images["a"]).save(folder / "a.png")
    Image.fromarray(images["b"]).save(folder / "b.jpg", quality=95)
    for name, mask in masks.items():
        np.save(folder / f"{name}.npy", mask)
    labels = LabelSet(("background", "head", "hair"))
    ann = import_image_annotations(folder, backend, tmp_path / "a.h5", labels=labels, expected_count=2)
    assert ann.ids == ["a", "b"] and ann.source == "images"
    assert np.array_equal(ann.images[0], images["a"]) and np.array_equal(ann.masks[0], masks["a"])
    jpeg = np.array(Image.open(folder / "b.jpg").convert("RGB"))[None]
    want_image, want_mask = resize_annotations(jpeg, masks["b"].astype(np.uint8)[None], 16)
    assert np.array_equal(ann.images[1], want_image[0]) and np.array_equal(ann.masks[1], want_mask[0])

    np.save(folder / "c.npy", masks["a"])
    Image.fromarray(images["a"]).save(folder / "d.png")
    with pytest.raises(AnnotationError) as e:
        import_image_annotations(folder, backend, tmp_path / "b.h5", labels=labels)
    assert [p.strip() for p in str(e.value).splitlines()[1:]] == [
        "c.npy: mask without an image c.png/.jpg (extra file)", "d.png: no mask d.npy beside it"]
    assert not (tmp_path / "b.h5").exists()
