"""DatasetGAN's released annotations (nv-tlabs/datasetGAN_release), read as they are into an :class:`AnnotationSet`.

The release's ``dataset_release/`` holds, per domain, a folder of annotated
samples (``annotation/training_data/<domain>_processed/``: ``image_mask<i>.npy``,
an integer label map, and ``image_<i>.jpg``, the annotated image) and, apart,
``training_latent/<task>/latent_stylegan1.npy`` (``[N, 512]``, the z of sample
``i`` in row ``i``; its loader keeps the first ``max_training`` rows) and the
truncation centre ``avg_latent_stylegan1.npy`` (cat: ``avg_latent_cat.npy``).
Masks are paired with latents by index, as the release's ``prepare_data``
pairs them; like it, each mask is resized (nearest) to the task's image if its
size differs, and a label covering fewer than 30 px of a mask is set to
background ("clean up artifacts in the annotation, must do").

Every image is compared with the re-render of every latent, on the task's image
view. An image nearest to another latent than its own is reported, with the
latent it matches: the release's latent files are known to be shifted against
their images (its issue #41), and that is reported per file, never repaired.
Re-renders cannot reproduce the release's images exactly (they were rendered
with noise drawn afresh, and saved as JPEG), so the comparison is the mean
absolute difference, within :data:`MATCH_TOLERANCE`.

Class merges (``merge``), the release's tables as facts: Car-20 → ADE-Car-12
(its ``utils/data_util.trans_mask_stylegan_20classTo12``: every non-background
part is car body unless mapped to a finer class) and Face-34 → CelebA-Mask-8
(CelebAMask-HQ's 8-class protocol of DatasetGAN and SemanticGAN: skin, nose,
eye, brow, ear, mouth, hair over background; the release names no table, so
the 34 parts are assigned by their names).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from labelfactory.annotations.annotation_set import AnnotationSet
from labelfactory.annotations.labels import AnnotationError, LabelSet, resolve_labels
from labelfactory.generators.base import UNCONDITIONAL, GeneratorBackend, images_to_uint8
from labelfactory.generators.view import view_of

MASK = re.compile(r"^image_mask(\d+)\.npy$")
LATENTS_FILE = "latent_stylegan1.npy"
LABELS_FILE = "labels.yaml"
MIN_REGION_PX = 30  # the release's prepare_data sets smaller label regions to background
MATCH_TOLERANCE = 16.0  # mean |image - re-render| (in 1/255) within which an image is its latent's render
UNKNOWN_SEED = -1  # released latents have no seed: the latent is the sample's address
RENDER_CHUNK = 16

CAR20 = ("background", "back_bumper", "bumper", "car_body", "car_lights", "door", "fender", "grilles", "handles",
         "hoods", "licensePlate", "mirror", "roof", "running_boards", "tailLight", "tire", "trunk_lids", "wheelhub",
         "window", "windshield")
# named as the comments of the release's mapping name its ids (its car_12_class list orders the same
# names otherwise, but the mapping's ids are what its synthetic labels and the ADE test masks carry)
ADECAR12 = ("background", "car_body", "head light", "licence plate", "mirror", "tail light", "wheel", "window",
            "wind shield", "door", "handle", "wheelhub")
FACE34 = ("background", "head", "head***cheek", "head***chin", "head***ear", "head***ear***helix",
          "head***ear***lobule", "head***eye***botton lid", "head***eye***eyelashes", "head***eye***iris",
          "head***eye***pupil", "head***eye***sclera", "head***eye***tear duct", "head***eye***top lid",
          "head***eyebrow", "head***forehead", "head***frown", "head***hair", "head***hair***sideburns", "head***jaw",
          "head***moustache", "head***mouth***inferior lip", "head***mouth***oral comisure",
          "head***mouth***superior lip", "head***mouth***teeth", "head***neck", "head***nose",
          "head***nose***ala of nose", "head***nose***bridge", "head***nose***nose tip", "head***nose***nostril",
          "head***philtrum", "head***temple", "head***wrinkles")
CELEBAMASK8 = ("background", "skin", "nose", "eye", "brow", "ear", "mouth", "hair")


def _face_part(name: str) -> str:
    """The CelebA-Mask-8 class of a Face-34 part: by the part's name; neck is background (as in the
    8-class merge of CelebAMask-HQ), facial skin parts, moustache and wrinkles are skin."""
    parts = name.split("***")
    if parts[0] == "background" or parts[-1] == "neck":
        return "background"
    for key, cls in (("nose", "nose"), ("eyebrow", "brow"), ("eye", "eye"), ("ear", "ear"), ("mouth", "mouth"),
                     ("hair", "hair")):
        if key in parts:
            return cls
    return "skin"


# merge name -> (source names, target names, target id of each source id)
MERGES = {
    # the release's table: Car-20 id -> ADE-Car-12 id, every other part -> car_body (1)
    "car20-to-adecar12": (CAR20, ADECAR12, tuple({0: 0, 4: 2, 14: 5, 10: 3, 19: 8, 15: 6, 5: 9, 8: 10, 17: 11,
                                                  18: 7, 11: 4}.get(i, 1) for i in range(len(CAR20)))),
    "face34-to-celebamask8": (FACE34, CELEBAMASK8, tuple(CELEBAMASK8.index(_face_part(n)) for n in FACE34)),
}


def datasetgan_layout(root: str | os.PathLike) -> bool:
    """Whether ``root`` is a folder of the release's ``image_mask<i>.npy`` masks."""
    root = Path(root)
    return root.is_dir() and any(MASK.match(f.name) for f in root.iterdir())


def merge_masks(mask: np.ndarray, merge: str) -> np.ndarray:
    """A mask of the merge's source labels mapped onto its target labels."""
    return np.asarray(MERGES[merge][2], dtype=np.uint8)[mask]


def _nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize as the release's ``cv2.resize(INTER_NEAREST)``: source index floor(i · in / out)."""
    rows = np.arange(shape[0]) * mask.shape[0] // shape[0]
    cols = np.arange(shape[1]) * mask.shape[1] // shape[1]
    return mask[rows[:, None], cols[None, :]]


def _read_mask(path: Path, shape: tuple[int, int], num_labels: int, problems: list[str]) -> np.ndarray | None:
    try:
        mask = np.squeeze(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError) as e:
        problems.append(f"{path.name}: unreadable .npy ({e})")
        return None
    if mask.ndim != 2 or not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        problems.append(f"{path.name}: must be a 2-D label map, got {mask.dtype} {list(mask.shape)}")
        return None
    if mask.shape[0] * shape[1] != mask.shape[1] * shape[0]:
        problems.append(f"{path.name}: {mask.shape[0]}x{mask.shape[1]} does not have the aspect of the task's "
                        f"{shape[0]}x{shape[1]} image (HxW; see the task's `image` crop)")
        return None
    bad = np.unique(mask[(mask < 0) | (mask >= num_labels) | (mask != np.round(mask))])
    if bad.size:
        problems.append(f"{path.name}: label ids {bad[:8].tolist()} are not in 0..{num_labels - 1}")
        return None
    mask = _nearest(mask.astype(np.uint8), shape)
    for label in np.unique(mask):
        if label and (mask == label).sum() < MIN_REGION_PX:
            mask[mask == label] = 0
    return mask


def _read_latents(path: Path, z_dim: int, count: int, problems: list[str]) -> np.ndarray | None:
    if not path.is_file():
        problems.append(f"{path.name}: missing (the release's latent file, one z per mask; "
                        "tasks.<task>.annotation.latents names it)")
        return None
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        problems.append(f"{path.name}: unreadable .npy ({e})")
        return None
    z = z.reshape(len(z), -1) if z.ndim == 3 and z.shape[1] == 1 else z
    if z.ndim != 2 or z.shape[1] != z_dim or not np.issubdtype(z.dtype, np.floating):
        problems.append(f"{path.name}: must be float [N, {z_dim}], got {z.dtype} {list(z.shape)}")
    elif len(z) < count:
        problems.append(f"{path.name}: {len(z)} latents for {count} masks (image_mask0..{count - 1}.npy)")
    elif not np.all(np.isfinite(z)):
        problems.append(f"{path.name}: non-finite values")
    else:
        return z.astype(np.float32)
    return None


def _read_image(path: Path, shape: tuple[int, int], problems: list[str]) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        problems.append(f"{path.name}: unreadable image ({e})")
        return None
    if im.size != (shape[1], shape[0]):
        im = im.resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(im, dtype=np.float32)


def shift_problems(images: dict[int, np.ndarray], renders: np.ndarray, latents_name: str) -> list[str]:
    """For each annotated image ``{i: float [H,W,3]}`` that is not the render of latent ``i``
    (uint8 ``renders [N,H,W,3]``), one line naming the latent it is nearest to."""
    problems, offsets = [], set()
    for i, img in sorted(images.items()):
        d = np.abs(renders.astype(np.float32) - img[None]).mean(axis=(1, 2, 3))
        best = int(d.argmin())
        if best != i and d[best] <= MATCH_TOLERANCE:
            offsets.add(best - i)
            problems.append(f"image_{i}.jpg: is the render of latent {best} of {latents_name} (mean difference "
                            f"{d[best]:.1f}/255), not of latent {i} ({d[i]:.1f}/255), so image_mask{i}.npy would be "
                            f"trained on another image: the latent file is shifted against the images (DatasetGAN "
                            f"issue #41); fix the files, nothing is re-paired here")
        elif d[i] > MATCH_TOLERANCE:
            problems.append(f"image_{i}.jpg: differs from the re-render of latent {i} by {d[i]:.1f}/255 on average "
                            f"(tolerance {MATCH_TOLERANCE:g}; nearest is latent {best}, {d[best]:.1f}/255): the "
                            "generator, truncation, average latent or image view is not the release's")
    if len(offsets) == 1 and len(problems) > 1:
        problems.append(f"{latents_name}: every mismatched image matches latent i{next(iter(offsets)):+d}")
    return problems


def import_datasetgan_annotations(root: str | os.PathLike, backend: GeneratorBackend, out_h5: str | os.PathLike,
                                  truncation: float = 1.0, noise: str = "none",
                                  labels: LabelSet | str | os.PathLike | None = None,
                                  latents: str | os.PathLike | None = None, merge: str | None = None,
                                  expected_count: int | None = None) -> AnnotationSet:
    """Validate a folder of the release's annotations against re-renders of its latents and
    write them to HDF5 (masks mapped by ``merge``, if given, onto the task's ``labels``).

    ``latents`` defaults to ``<root>/latent_stylegan1.npy``. Every problem (each named
    by its file) is raised in one :class:`AnnotationError`; ``out_h5`` is written only
    when there are none."""
    root = Path(root)
    problems: list[str] = []
    labelset = resolve_labels(labels, root / LABELS_FILE, problems)
    source = None
    if merge is not None:
        source, target, _ = MERGES[merge]
        if labelset is not None and labelset.names != target:
            problems.append(f"labels: merge {merge} gives the labels {list(target)}, the task has "
                            f"{list(labelset.names)}")
    num_source = len(source) if source else (len(labelset.names) if labelset else 256)
    found = sorted(int(m.group(1)) for f in root.iterdir() if (m := MASK.match(f.name)))
    gaps = sorted(set(range(len(found))) - set(found))
    if gaps:
        problems.append(f"image_mask{gaps[0]}.npy: missing (the release numbers its masks 0..{len(found) - 1}, "
                        "paired with the latents by that index)")
    if expected_count is not None and len(found) < expected_count:
        problems.append(f"{root.name}: {len(found)} annotated samples, expected at least {expected_count}")
    view, res = view_of(backend), backend.resolution
    shape = view.shape(res)
    masks = {i: m for i in found if (m := _read_mask(root / f"image_mask{i}.npy", shape, num_source, problems))
             is not None}
    latents_path = Path(latents) if latents is not None else root / LATENTS_FILE
    z = _read_latents(latents_path, backend.z_dim, len(found), problems)
    renders = None
    if z is not None:
        raw = np.concatenate([backend.render(z[i : i + RENDER_CHUNK], None, truncation, noise)
                              for i in range(0, len(z), RENDER_CHUNK)])
        renders = images_to_uint8(torch.from_numpy(raw))
        images = {i: img for i in found if (root / f"image_{i}.jpg").is_file()
                  and (img := _read_image(root / f"image_{i}.jpg", shape, problems)) is not None}
        problems += shift_problems(images, view.cut(renders, res, channels_last=True), latents_path.name)
    if problems:
        raise AnnotationError(root, problems)

    ignore = labelset.ignore_index
    aset = AnnotationSet(
        ids=[f"image_{i}" for i in found], seeds=np.full(len(found), UNKNOWN_SEED, dtype=np.int64),
        classes=np.full(len(found), UNCONDITIONAL, dtype=np.int32), latents=z[found],
        images=renders[found],
        masks=np.stack([view.pad(merge_masks(masks[i], merge) if merge else masks[i], res, ignore) for i in found]),
        labels=labelset, generator_hash=backend.generator_hash, truncation=float(truncation), noise=noise,
    )
    aset.save(out_h5)
    return aset


__all__ = ["MERGES", "datasetgan_layout", "import_datasetgan_annotations", "merge_masks", "shift_problems"]
