"""What every export format shares: its options, the task's provenance, the format registry,
pieces of consecutive samples, and lossless PNG encoding."""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from labelfactory.core.registry import Registry
from labelfactory.synthesis.dataset import SyntheticDataset
from labelfactory.synthesis.export.journal import Journal

IMAGE_FORMATS = ("jpg", "png")


@dataclass(frozen=True)
class ExportOptions:
    """``include_dropped``: also the samples the filter dropped (marked ``kept: false``);
    ``ignore_uncertain``: the fraction of each exported sample's pixels, the most uncertain
    (per-pixel JS), labelled 255 (0: none); ``piece_size``: samples per piece (a tar, a Parquet
    file, a block of VOC files), the unit an interrupted export redoes; ``batch_size``: samples
    read at once; ``image_format``: VOC's images, ``jpg`` (quality 95, the VOC layout's names,
    lossy) or ``png`` (lossless); ``class_names``: generator class -> name, for class-conditional
    tasks (default ``class<id>`` for each class in the manifest)."""

    include_dropped: bool = False
    ignore_uncertain: float = 0.0
    piece_size: int = 1000
    batch_size: int = 64
    image_format: str = "jpg"
    class_names: dict[int, str] | None = field(default=None)

    def __post_init__(self):
        if not 0 <= self.ignore_uncertain < 1:
            raise ValueError(f"ignore_uncertain must lie in [0, 1), got {self.ignore_uncertain}")
        if self.piece_size < 1 or self.batch_size < 1:
            raise ValueError(f"piece_size and batch_size must be positive, got {self.piece_size}, {self.batch_size}")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {self.image_format!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_names"] = None if self.class_names is None else {str(k): v for k, v in sorted(self.class_names.items())}
        return d


@dataclass(frozen=True)
class TaskInfo:
    """What an export records about its task (:func:`~labelfactory.synthesis.export.task.task_info`)."""

    name: str
    label_names: tuple[str, ...]
    class_names: dict[int, str]  # empty for an unconditional generator
    generator_hash: str
    interpreter: str
    labeller_hash: str
    annotations_sha256: str | None
    manifest_sha256: str
    num_samples: int
    num_kept: int
    filter_ratio: float  # the share of samples the filter dropped
    code_version: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label_names"] = list(self.label_names)
        d["class_names"] = {str(k): v for k, v in sorted(self.class_names.items())}
        return d


# format -> exporter(samples, out, info, options, journal) -> the files written besides the journaled pieces
Exporter = Callable[[SyntheticDataset, Path, TaskInfo, ExportOptions, Journal], list[Path]]
EXPORTERS: Registry[Exporter] = Registry("export format")


def pieces(samples: SyntheticDataset, options: ExportOptions) -> Iterator[tuple[int, int, int]]:
    """``(piece number, first item, end item)`` of each piece of ``options.piece_size`` items."""
    for number, start in enumerate(range(0, len(samples), options.piece_size)):
        yield number, start, min(start + options.piece_size, len(samples))


def png_bytes(array: np.ndarray, palette: bytes | None = None) -> bytes:
    """``array`` (uint8 ``[H,W,3]`` or ``[H,W]``) as PNG bytes (lossless; with ``palette``, a
    palette PNG whose pixel values are the array's)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if palette is None:
        image = Image.fromarray(array)
    else:
        image = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        image.putpalette(palette)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_file(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary name beside it (``.<name>.partial``, which a re-run
    overwrites), renamed when complete: a killed writer never leaves a partial file under the final
    name. Unlike :func:`~labelfactory.core.io.atomic_path` it neither fsyncs nor scans the folder for
    stale temporaries (73 ms per file beside 20k others): an export writes many small files into
    one folder, and a file a crash lost is caught by the journal's checksums."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
