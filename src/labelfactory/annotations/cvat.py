"""CVAT "Segmentation mask 1.1" exports (VOC-style folders): coloured masks in
``SegmentationClass/`` read into label ids through ``labelmap.txt``.

``labelmap.txt`` lines are ``name:r,g,b:parts:actions`` (``#`` starts a comment);
each name is matched to ``labels.yaml`` by name. A background-like name (``background``,
``_background_``, ``__background__``, ``bg``) also matches a background-like first
label, and black (0,0,0) is that label where the labelmap gives black no name. VOC's
border colour (224,224,192) is the ignore index, named in the labelmap or not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labelfactory.annotations.checks import open_png
from labelfactory.annotations.handout import IMAGE_SUFFIX
from labelfactory.annotations.labels import LabelSet

LABELMAP_FILE = "labelmap.txt"


SEGMENTATION_DIR = "SegmentationClass"


BACKGROUND_NAMES = ("background", "_background_", "__background__", "bg")


BLACK, VOC_BORDER = (0, 0, 0), (224, 224, 192)


def _key(rgb) -> int:
    r, g, b = rgb
    return (int(r) << 16) | (int(g) << 8) | int(b)


def _rgb(key: int) -> str:
    return f"({key >> 16},{(key >> 8) & 255},{key & 255})"


def _parse_colour(text: str) -> tuple[int, int, int] | None:
    try:
        rgb = tuple(int(c) for c in text.split(","))
    except ValueError:
        return None
    return rgb if len(rgb) == 3 and all(0 <= c <= 255 for c in rgb) else None


def _label_id(name: str, names: tuple[str, ...]) -> int | None:
    if name in names:
        return names.index(name)
    background = name.lower() in BACKGROUND_NAMES and names[0].lower() in BACKGROUND_NAMES
    return 0 if background else None


def read_labelmap(path: Path, labels: LabelSet | None, problems: list[str]) -> dict[int, int | None] | None:
    """The label id of each colour (as ``r << 16 | g << 8 | b``) of a CVAT/VOC
    ``labelmap.txt``, None for the colour of a line reported in ``problems``; None
    if the file is unreadable or there are no labels."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{path.name}: unreadable ({e})")
        return None
    if labels is None:
        return None
    colours: dict[int, int | None] = {}
    for n, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split(":")
        name, rgb = fields[0].strip(), _parse_colour(fields[1]) if len(fields) > 1 else None
        if rgb is None:
            problems.append(f"{path.name}: line {n}: expected 'name:r,g,b:parts:actions' with 0..255 colours, "
                            f"got {text!r}")
            continue
        key, label = _key(rgb), labels.ignore_index if rgb == VOC_BORDER else _label_id(name, labels.names)
        if label is None:
            problems.append(f"{path.name}: line {n}: label {name!r} is not in labels.yaml {list(labels.names)}")
        elif colours.get(key, label) != label:
            problems.append(f"{path.name}: line {n}: colour {_rgb(key)} of {name!r} is an earlier line's too")
        colours[key] = label if colours.get(key, label) == label else None
    colours.setdefault(_key(VOC_BORDER), labels.ignore_index)
    if labels.names[0].lower() in BACKGROUND_NAMES:
        colours.setdefault(_key(BLACK), 0)
    return colours


def cvat_mask_files(ann_dir: Path, sid: str) -> list[Path]:
    """The CVAT masks of sample ``sid`` present (named after ``<id>.image.png`` or ``<id>``)."""
    folder = ann_dir / SEGMENTATION_DIR
    return [p for p in (folder / f"{sid}.png", folder / f"{sid}{IMAGE_SUFFIX}") if p.is_file()]


def cvat_mask_ids(ann_dir: Path) -> dict[str, Path]:
    """Every mask in ``SegmentationClass/`` by the sample id it names."""
    folder = ann_dir / SEGMENTATION_DIR
    if not folder.is_dir():
        return {}
    return {p.name.removesuffix(IMAGE_SUFFIX).removesuffix(".png"): p
            for p in sorted(folder.iterdir()) if p.suffix == ".png" and p.is_file()}


def read_cvat_mask(path: Path, name: str, colours: dict[int, int | None] | None,
                   problems: list[str]) -> np.ndarray | None:
    """A palette or RGB mask of ``SegmentationClass/`` as label ids; every colour
    not in the labelmap is reported, under ``name``, with its pixel count. None
    where a colour's labelmap line was bad (reported there)."""
    im = open_png(path, problems, name)
    if im is None:
        return None
    if im.mode not in ("P", "RGB"):
        problems.append(f"{name}: image mode {im.mode}: CVAT/VOC masks are palette (P) or RGB PNGs coloured "
                        "as in labelmap.txt (index masks go at <id>.png)")
        return None
    if colours is None:
        return None
    rgb = np.asarray(im.convert("RGB"), dtype=np.int32)
    keys, inverse, counts = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2],
                                      return_inverse=True, return_counts=True)
    unknown = [(int(k), int(c)) for k, c in zip(keys, counts) if int(k) not in colours]
    if unknown:
        problems.append(f"{name}: colours not in labelmap.txt: " + ", ".join(f"{_rgb(k)} ({c} px)"
                                                                             for k, c in unknown))
        return None
    ids = [colours[int(k)] for k in keys]
    if None in ids:
        return None
    ids = np.array(ids, dtype=np.uint8)
    return ids[inverse.reshape(rgb.shape[:2])]
