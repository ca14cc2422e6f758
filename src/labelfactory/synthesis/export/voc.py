"""VOC-style folders, as mmsegmentation, torchvision's ``VOCSegmentation`` and most trainers read:
``JPEGImages/<key>.jpg`` (JPEG quality 95 without chroma subsampling: lossy; with
``image_format: png``, ``<key>.png``, lossless, for readers with an image suffix option),
``SegmentationClass/<key>.png`` (palette PNGs in VOC's colour map whose pixel values are the label
ids, 255 ignore), ``ImageSets/Segmentation/train.txt`` (the kept samples; ``dropped.txt`` the
dropped ones when exported), ``labelmap.txt`` (CVAT/VOC: ``name:r,g,b::``) and ``samples.csv``
(each sample's seed, class, score, kept). For torchvision, export to ``<root>/VOCdevkit/VOC2012``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from labelfactory.core.io import atomic_path, atomic_write_text
from labelfactory.synthesis.dataset import SyntheticDataset, sample_key
from labelfactory.synthesis.export.base import EXPORTERS, ExportOptions, TaskInfo, pieces, png_bytes, write_file
from labelfactory.synthesis.export.journal import Journal

IMAGES, MASKS, SETS = "JPEGImages", "SegmentationClass", "ImageSets/Segmentation"
JPEG_QUALITY = 95


def voc_palette() -> np.ndarray:
    """VOC's colour map ``[256, 3]`` uint8 (the bit-interleaved one of the devkit; 255 is (224, 224, 192))."""
    cmap = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, rgb = i, [0, 0, 0]
        for j in range(8):
            for k in range(3):
                rgb[k] |= ((c >> k) & 1) << (7 - j)
            c >>= 3
        cmap[i] = rgb
    return cmap


def _image_bytes(image: np.ndarray, fmt: str) -> bytes:
    if fmt == "png":
        return png_bytes(image)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


@EXPORTERS.register("voc")
def export_voc(samples: SyntheticDataset, out: Path, info: TaskInfo, options: ExportOptions,
               journal: Journal) -> list[Path]:
    """Write image and mask files piece by piece, then the image sets, label map and sample table."""
    palette = voc_palette()
    for folder in (IMAGES, MASKS):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for number, start, stop in pieces(samples, options):
        piece = f"piece-{number:06d}"
        if journal.done(piece):
            continue
        files = []
        for s in samples.stream(start, stop, options.batch_size):
            image, mask = out / IMAGES / f"{s.key}.{options.image_format}", out / MASKS / f"{s.key}.png"
            write_file(image, _image_bytes(s.arrays["image"], options.image_format))
            write_file(mask, png_bytes(s.arrays["label"], palette=palette.tobytes()))
            files += [image, mask]
        journal.record(piece, files)
    rows = samples.rows.assign(key=[sample_key(int(s), int(c)) for s, c in zip(samples.rows["seed"],
                                                                               samples.rows["class"])])
    written = [out / SETS / "train.txt", out / "labelmap.txt", out / "samples.csv"]
    atomic_write_text(written[0], "".join(f"{k}\n" for k in rows.loc[rows["kept"], "key"]))
    if options.include_dropped:
        written.append(out / SETS / "dropped.txt")
        atomic_write_text(written[-1], "".join(f"{k}\n" for k in rows.loc[~rows["kept"], "key"]))
    atomic_write_text(written[1], "# label:color_rgb:parts:actions\n" + "".join(
        f"{name}:{','.join(str(int(v)) for v in palette[k])}::\n" for k, name in enumerate(info.label_names)))
    with atomic_path(written[2]) as tmp:
        rows.assign(shard=rows["shard"].map(lambda p: Path(p).name))[
            ["key", "seed", "class", "score", "kept", "shard", "index"]].to_csv(tmp, index=False)
    return written
