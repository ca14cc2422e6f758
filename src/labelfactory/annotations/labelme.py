"""LabelMe JSON annotations (polygons, rectangles, circles) drawn into label-id masks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from labelfactory.annotations.labels import LabelSet

LABELME_IGNORE = "__ignore__"  # LabelMe's conventional name for "do not train on these pixels"


LABELME_SHAPES = ("polygon", "rectangle", "circle")


def _draw_shape(draw: ImageDraw.ImageDraw, shape, ids: dict[str, int]) -> str | None:
    """Draw one LabelMe shape (as LabelMe itself rasterizes it); returns why not, if not."""
    try:
        label, kind = shape["label"], shape.get("shape_type") or "polygon"
        pts = [(float(x), float(y)) for x, y in shape["points"]]
    except (KeyError, TypeError, ValueError, AttributeError):
        return "needs 'label' and 'points' as [[x, y], ...]"
    if label not in ids:
        return f"label {label!r} is not in labels.yaml {sorted(ids, key=ids.get)}"
    if kind not in LABELME_SHAPES:
        return f"shape_type {kind!r} is not supported (use one of {list(LABELME_SHAPES)})"
    if kind == "polygon" and len(pts) < 3 or kind != "polygon" and len(pts) != 2:
        return f"a {kind} needs {'at least 3' if kind == 'polygon' else 'exactly 2'} points, got {len(pts)}"
    v = ids[label]
    if kind == "polygon":
        draw.polygon(pts, fill=v, outline=v)
    elif kind == "rectangle":
        (x0, y0), (x1, y1) = pts
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=v, outline=v)
    else:
        (cx, cy), (px, py) = pts
        r = math.hypot(px - cx, py - cy)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=v, outline=v)
    return None


def read_labelme_mask(path: Path, labels: LabelSet | None, problems: list[str]) -> np.ndarray | None:
    """Rasterize a LabelMe JSON: shapes drawn in order over background (label 0);
    the label ``__ignore__`` marks ignored pixels."""
    try:
        doc = json.loads(path.read_text())
        h, w = int(doc["imageHeight"]), int(doc["imageWidth"])
        shapes = list(doc.get("shapes") or [])
        if h <= 0 or w <= 0:
            raise ValueError(f"image size {h}x{w} must be positive")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        problems.append(f"{path.name}: unreadable LabelMe JSON ({type(e).__name__}: {e})")
        return None
    if labels is None:
        return None
    ids = {n: i for i, n in enumerate(labels.names)} | {LABELME_IGNORE: labels.ignore_index}
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    shape_problems = [f"{path.name}: shape {k}: {p}" for k, s in enumerate(shapes)
                      if (p := _draw_shape(draw, s, ids)) is not None]
    problems += shape_problems
    return None if shape_problems else np.asarray(mask, dtype=np.uint8)
