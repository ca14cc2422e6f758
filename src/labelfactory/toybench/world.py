"""The toy world: procedural scenes with exact part and object labels.

Every scene is a function of ``(seed, class)``: one object of a class (car,
face, house, tree) with 3-4 labelled parts, at a random position, scale,
rotation and mirror, painted with shaded colours over a textured background,
plus pixel noise. Part colours come from overlapping ranges, so colour alone
cannot segment the parts; adjacent parts of one scene are kept apart in colour
so every boundary is visible.

The world stands in for a real domain where the truth is known: generators are
trained on its images without labels, the simulated annotator on its labels,
and fresh renders are the "real" test set.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from labelfactory.core.visualize import colorize_labels

CLASSES: tuple[str, ...] = ("car", "face", "house", "tree")
# Domains rendered alone, outside the object classes (and their joint part space): the
# small-parts portrait, a close-up face whose eyebrows, eyes, nose and lips are a few
# pixels wide at 32x32, as a real face generator's parts are at 64x64.
SOLO_CLASSES: tuple[str, ...] = ("portrait",)
ALL_CLASSES: tuple[str, ...] = CLASSES + SOLO_CLASSES

PARTS: dict[str, tuple[str, ...]] = {
    "car": ("body", "window", "wheel", "light"),
    "face": ("skin", "hair", "eye", "mouth"),
    "house": ("wall", "roof", "door", "window"),
    "tree": ("trunk", "foliage", "fruit"),
    "portrait": ("skin", "hair", "eyebrow", "eye", "nose", "lips"),
}

# Keypoints per class: (name, the part it lies on). Pairs named left_/right_ are the subject's
# left and right (COCO's convention: a frontal face's left eye is on the image's right); a car
# is seen from the side, so front and rear keep their names under a mirror.
KEYPOINTS: dict[str, tuple[tuple[str, str], ...]] = {
    "car": (("rear_wheel", "wheel"), ("front_wheel", "wheel"), ("light", "light"),
            ("roof_rear", "body"), ("roof_front", "body")),
    "face": (("left_eye", "eye"), ("right_eye", "eye"), ("nose", "skin"),
             ("left_mouth", "mouth"), ("right_mouth", "mouth")),
}
KEYPOINT_FLIP_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "car": (),
    "face": (("left_eye", "right_eye"), ("left_mouth", "right_mouth")),
}
KEYPOINT_SKELETON: dict[str, tuple[tuple[str, str], ...]] = {
    "car": (("rear_wheel", "front_wheel"), ("roof_rear", "roof_front"), ("front_wheel", "light"),
            ("rear_wheel", "roof_rear"), ("front_wheel", "roof_front")),
    "face": (("left_eye", "right_eye"), ("left_eye", "nose"), ("right_eye", "nose"),
             ("nose", "left_mouth"), ("nose", "right_mouth"), ("left_mouth", "right_mouth")),
}


def keypoint_names(cls: str) -> tuple[str, ...]:
    """Keypoint names of a class, in the order of :attr:`Scene.keypoints` (empty: no keypoints)."""
    return tuple(name for name, _ in KEYPOINTS.get(cls, ()))


def part_labels(cls: str) -> tuple[str, ...]:
    """Label names of a class's part mask, index 0 being the background."""
    return ("background",) + PARTS[cls]


def part_space(classes: tuple[str, ...] = CLASSES) -> tuple[str, ...]:
    """Label names of the joint part space of ``classes`` (``class/part``), index 0 the
    background; by default the object classes' (:func:`global_part_labels`)."""
    return ("background",) + tuple(f"{c}/{p}" for c in classes for p in PARTS[c])


def part_offset(cls: str, classes: tuple[str, ...] = CLASSES) -> int:
    """Offset that maps a class's part ids (1..P) into the joint part space of ``classes``."""
    offset = 0
    for c in classes:
        if c == cls:
            return offset
        offset += len(PARTS[c])
    raise KeyError(cls)


def global_part_labels() -> tuple[str, ...]:
    """Label names of the joint part space of the object classes (``class/part``)."""
    return part_space(CLASSES)


def global_part_offset(cls: str) -> int:
    """Offset that maps a class's part ids (1..P) into the object classes' joint part space."""
    return part_offset(cls, CLASSES)


@dataclass(frozen=True)
class Scene:
    """One rendered scene: uint8 image ``[H,W,3]``, part mask ``[H,W]``
    (0 = background, 1..P = the class's parts), object mask ``[H,W]`` (0/1), and the
    exact keypoints float32 ``[K,3]`` (:func:`keypoint_names` order; ``[0,3]`` for classes
    without): ``x, y`` in pixels, the centre of pixel ``(row i, column j)`` at ``(j, i)``, and
    COCO's visibility, 2 inside the image, 1 outside it (still exact)."""

    image: np.ndarray
    parts: np.ndarray
    object: np.ndarray
    cls: int
    seed: int
    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))


# --- colour ranges: (hue range, saturation range, value range); hue wraps ----
_ANY = (0.0, 1.0)
_COLOURS: dict[str, dict[str, tuple[tuple[float, float], ...]]] = {
    "car": {
        "body": (_ANY, (0.20, 0.95), (0.20, 0.95)),
        "window": ((0.40, 0.80), (0.05, 0.70), (0.15, 0.90)),
        "wheel": (_ANY, (0.00, 0.50), (0.05, 0.55)),
        "light": (_ANY, (0.00, 0.80), (0.60, 1.00)),
    },
    "face": {
        "skin": ((0.00, 0.14), (0.15, 0.75), (0.30, 0.98)),
        "hair": ((-0.05, 0.20), (0.10, 0.90), (0.05, 0.95)),
        "eye": (_ANY, (0.00, 0.80), (0.05, 0.75)),
        "mouth": ((-0.08, 0.08), (0.25, 0.90), (0.30, 0.95)),
    },
    "house": {
        "wall": (_ANY, (0.05, 0.70), (0.35, 0.98)),
        "roof": ((-0.10, 0.15), (0.15, 0.90), (0.15, 0.85)),
        "door": ((-0.05, 0.20), (0.15, 0.90), (0.10, 0.80)),
        "window": ((0.40, 0.80), (0.05, 0.70), (0.20, 0.95)),
    },
    "portrait": {
        "skin": ((0.00, 0.12), (0.15, 0.65), (0.45, 0.98)),
        "hair": ((-0.05, 0.20), (0.10, 0.90), (0.05, 0.85)),
        "eyebrow": ((-0.05, 0.15), (0.10, 0.80), (0.05, 0.45)),
        "eye": (_ANY, (0.00, 0.70), (0.02, 0.40)),
        "nose": ((0.00, 0.10), (0.20, 0.70), (0.30, 0.80)),
        "lips": ((-0.08, 0.05), (0.30, 0.90), (0.35, 0.85)),
    },
    "tree": {
        "trunk": ((0.00, 0.15), (0.20, 0.90), (0.10, 0.70)),
        "foliage": ((0.05, 0.45), (0.25, 0.95), (0.20, 0.90)),
        "fruit": ((-0.08, 0.20), (0.40, 1.00), (0.35, 1.00)),
    },
}

_MIN_PART_CONTRAST = 0.22  # RGB distance kept between consecutive parts of one scene


@lru_cache(maxsize=64)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]: (x, y), each ``[size, size]``."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(c, c, indexing="ij")
    return x, y


@lru_cache(maxsize=64)
def _interp(size: int, knots: int) -> np.ndarray:
    """Linear-interpolation matrix ``[size, knots]`` (value noise upsampling)."""
    pos = (np.arange(size) + 0.5) / size * (knots - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, knots - 2)
    frac = pos - lo
    m = np.zeros((size, knots), dtype=np.float32)
    m[np.arange(size), lo] = 1.0 - frac
    m[np.arange(size), lo + 1] = frac
    return m


def _value_noise(rng: np.random.Generator, size: int, knots: int, channels: int) -> np.ndarray:
    a = _interp(size, knots)
    g = rng.standard_normal((channels, knots, knots), dtype=np.float32)
    return np.moveaxis(a @ g @ a.T, 0, -1)


def _colour(rng: np.random.Generator, ranges) -> np.ndarray:
    (h0, h1), (s0, s1), (v0, v1) = ranges
    h = rng.uniform(h0, h1) % 1.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(s0, s1), rng.uniform(v0, v1)), dtype=np.float32)


def _part_colours(rng: np.random.Generator, cls: str) -> dict[str, np.ndarray]:
    """Colours per part; each part differs visibly from the one painted before it."""
    out: dict[str, np.ndarray] = {}
    prev = None
    for part in PARTS[cls]:
        for _ in range(8):
            col = _colour(rng, _COLOURS[cls][part])
            if prev is None or np.linalg.norm(col - prev) >= _MIN_PART_CONTRAST:
                break
        out[part] = col
        prev = col
    return out


# --- shapes in object coordinates (u right, v down, object spans about [-1, 1]) --
def _ellipse(u, v, cu, cv, ru, rv):
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _rect(u, v, u0, u1, v0, v1):
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _trapezoid(u, v, v0, v1, top0, top1, bot0, bot1):
    """Horizontal trapezoid between v0 (top edge [top0, top1]) and v1 (bottom edge)."""
    t = np.clip((v - v0) / (v1 - v0), 0.0, 1.0)
    left = top0 + (bot0 - top0) * t
    right = top1 + (bot1 - top1) * t
    return (v >= v0) & (v <= v1) & (u >= left) & (u <= right)


def _triangle(u, v, apex_v, base_v, half_width, apex_u=0.0):
    return _trapezoid(u, v, apex_v, base_v, apex_u, apex_u, -half_width, half_width)


def _car(rng, u, v):
    length = rng.uniform(0.9, 1.0)
    top = rng.uniform(-0.05, 0.05)
    cab0, cab1 = rng.uniform(-0.6, -0.4), rng.uniform(0.25, 0.45)
    roof = top - rng.uniform(0.38, 0.5)
    lower = _rect(u, v, -length, length, top, 0.45)
    cabin = _trapezoid(u, v, roof, top + 0.01, cab0 + 0.18, cab1 - 0.15, cab0, cab1)
    body = lower | cabin
    window = _trapezoid(u, v, roof + 0.08, top, cab0 + 0.24, cab1 - 0.21, cab0 + 0.12, cab1 - 0.1)
    pillar = abs(u - 0.5 * (cab0 + cab1)) < 0.05
    window &= ~pillar
    r = rng.uniform(0.2, 0.27)
    wx = length - r - rng.uniform(0.1, 0.2)
    wheel = _ellipse(u, v, -wx, 0.45, r, r) | _ellipse(u, v, wx, 0.45, r, r)
    light = _rect(u, v, length - 0.18, length, top + 0.06, top + 0.24)
    points = {"rear_wheel": (-wx, 0.45), "front_wheel": (wx, 0.45), "light": (length - 0.09, top + 0.15),
              "roof_rear": (cab0 + 0.18, roof), "roof_front": (cab1 - 0.15, roof)}
    return [("body", body), ("window", window), ("wheel", wheel), ("light", light)], points


def _face(rng, u, v):
    rw, rh = rng.uniform(0.6, 0.72), rng.uniform(0.78, 0.9)
    skin = _ellipse(u, v, 0.0, 0.05, rw, rh)
    hair_back = _ellipse(u, v, 0.0, -0.05, rw + 0.12, rh + 0.08) & (v < rng.uniform(0.2, 0.6))
    fringe = skin & (v < -0.35 + 0.08 * np.cos(7.0 * u))
    ey = rng.uniform(-0.12, 0.0)
    ex = rng.uniform(0.24, 0.32)
    er = rng.uniform(0.11, 0.15)
    eye = _ellipse(u, v, -ex, ey, er, er * 0.8) | _ellipse(u, v, ex, ey, er, er * 0.8)
    my, mw = rng.uniform(0.4, 0.5), rng.uniform(0.22, 0.32)
    mouth = _ellipse(u, v, 0.0, my, mw, rng.uniform(0.07, 0.12))
    # object u grows to the image's right unmirrored: the subject's left is +u (see KEYPOINTS)
    points = {"left_eye": (ex, ey), "right_eye": (-ex, ey), "nose": (0.0, 0.5 * (ey + my)),
              "left_mouth": (mw, my), "right_mouth": (-mw, my)}
    return [("hair", hair_back), ("skin", skin), ("hair", fringe), ("eye", eye), ("mouth", mouth)], points


def _house(rng, u, v):
    hw = rng.uniform(0.65, 0.8)
    eave = rng.uniform(-0.25, -0.1)
    wall = _rect(u, v, -hw, hw, eave, 0.9)
    roof = _triangle(u, v, rng.uniform(-0.95, -0.75), eave + 0.02, hw + rng.uniform(0.1, 0.22))
    dx = rng.uniform(-0.2, 0.2)
    dw = rng.uniform(0.13, 0.18)
    door = _rect(u, v, dx - dw, dx + dw, rng.uniform(0.35, 0.5), 0.9)
    wy = eave + rng.uniform(0.18, 0.28)
    ws = rng.uniform(0.14, 0.2)
    left_c, right_c = 0.5 * (-hw + dx - dw), 0.5 * (dx + dw + hw)
    window = _rect(u, v, left_c - ws, left_c + ws, wy, wy + 2 * ws) | _rect(
        u, v, right_c - ws, right_c + ws, wy, wy + 2 * ws
    )
    return [("wall", wall), ("roof", roof), ("door", door), ("window", window)], {}


def _tree(rng, u, v):
    tw = rng.uniform(0.1, 0.16)
    trunk = _rect(u, v, -tw, tw, 0.0, 0.95)
    r0, r1 = rng.uniform(0.45, 0.58), rng.uniform(0.32, 0.42)
    spread = rng.uniform(0.3, 0.4)
    foliage = (
        _ellipse(u, v, 0.0, -0.38, r0, r0)
        | _ellipse(u, v, -spread, -0.05, r1, r1)
        | _ellipse(u, v, spread, -0.05, r1, r1)
    )
    fruit = np.zeros_like(foliage)
    fr = rng.uniform(0.08, 0.11)
    for _ in range(rng.integers(3, 6)):
        fu, fv = rng.uniform(-0.55, 0.55), rng.uniform(-0.7, 0.1)
        fruit |= _ellipse(u, v, fu, fv, fr, fr)
    fruit &= foliage
    return [("trunk", trunk), ("foliage", foliage), ("fruit", fruit)], {}


def _portrait(rng, u, v):
    """A close-up face: skin oval under hair, and small parts (at scale 0.9 on 32x32 pixels
    one object unit is about 14 pixels: eyebrows 1-2 pixels tall, eyes about 2x3, a nose
    2x4 and lips 2x6)."""
    rw, rh = rng.uniform(0.62, 0.72), rng.uniform(0.8, 0.9)
    skin = _ellipse(u, v, 0.0, 0.08, rw, rh)
    hair_back = _ellipse(u, v, 0.0, -0.02, rw + 0.14, rh + 0.1) & (v < rng.uniform(0.1, 0.5))
    fringe = skin & (v < -0.5 + 0.06 * np.cos(6.0 * u))
    ey, ex = rng.uniform(-0.12, -0.02), rng.uniform(0.24, 0.32)
    eru, erv = rng.uniform(0.08, 0.11), rng.uniform(0.05, 0.07)
    eye = _ellipse(u, v, -ex, ey, eru, erv) | _ellipse(u, v, ex, ey, eru, erv)
    by = ey - rng.uniform(0.13, 0.18)
    bru, brv = rng.uniform(0.11, 0.15), rng.uniform(0.035, 0.05)
    brow = _ellipse(u, v, -ex, by, bru, brv) | _ellipse(u, v, ex, by, bru, brv)
    nose = _ellipse(u, v, 0.0, ey + rng.uniform(0.2, 0.26), rng.uniform(0.07, 0.09), rng.uniform(0.12, 0.16))
    lips = _ellipse(u, v, 0.0, rng.uniform(0.45, 0.52), rng.uniform(0.17, 0.24), rng.uniform(0.05, 0.07))
    return [("hair", hair_back), ("skin", skin), ("hair", fringe), ("eyebrow", brow), ("eye", eye), ("nose", nose),
            ("lips", lips)], {}


_SHAPES = {"car": _car, "face": _face, "house": _house, "tree": _tree, "portrait": _portrait}
_SCALE = {"car": (0.62, 0.88), "face": (0.6, 0.82), "house": (0.6, 0.82), "tree": (0.6, 0.82),
          "portrait": (0.86, 0.96)}


def class_index(cls: int | str) -> int:
    """Index of a class (object classes, then solo domains) given by name or index; unknown
    classes are an error."""
    idx = ALL_CLASSES.index(cls) if cls in ALL_CLASSES else cls
    if isinstance(idx, str) or not 0 <= int(idx) < len(ALL_CLASSES):
        raise ValueError(f"unknown toy-world class {cls!r}; classes are {ALL_CLASSES}")
    return int(idx)


def class_name(cls: int | str) -> str:
    """Name of a class given by name or index (see :func:`class_index`)."""
    return ALL_CLASSES[class_index(cls)]


def render(seed: int, cls: int | str, size: int = 64) -> Scene:
    """Render the scene of ``(seed, class)`` at ``size``×``size`` pixels."""
    ci = class_index(cls)
    name = ALL_CLASSES[ci]
    rng = np.random.default_rng([int(seed), ci])
    x, y = _grid(size)

    # background: base colour, two octaves of coloured value noise, a gradient
    base = _colour(rng, (_ANY, (0.0, 0.6), (0.25, 0.9)))
    img = base + 0.10 * _value_noise(rng, size, 4, 3) + 0.04 * _value_noise(rng, size, 9, 3)
    img = img + (rng.uniform(-0.12, 0.12) * y)[..., None]

    # object pose: scale, rotation, mirror, position
    s = rng.uniform(*_SCALE[name])
    theta = np.deg2rad(rng.uniform(-10.0, 10.0))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    cx, cy = rng.uniform(-0.12, 0.12, size=2)
    dx, dy = (x - cx) / s, (y - cy) / s
    cos, sin = np.cos(theta), np.sin(theta)
    u = (cos * dx + sin * dy) * flip
    v = -sin * dx + cos * dy

    colours = _part_colours(rng, name)
    light = rng.uniform(-1.0, 1.0, size=2)
    light *= rng.uniform(0.1, 0.25) / (np.linalg.norm(light) + 1e-6)
    shade = (1.0 + light[0] * u * flip + light[1] * v)[..., None]

    parts = np.zeros((size, size), dtype=np.uint8)
    part_id = {p: i + 1 for i, p in enumerate(PARTS[name])}
    shapes, points = _SHAPES[name](rng, u, v)
    for part, mask in shapes:
        parts[mask] = part_id[part]
    table = np.stack([np.zeros(3, np.float32)] + [colours[p] for p in PARTS[name]])
    obj = parts > 0
    img[obj] = table[parts[obj]] * shade[obj]

    img = img + rng.uniform(0.01, 0.04) * rng.standard_normal(img.shape, dtype=np.float32)
    image = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    keypoints = _image_keypoints(name, points, size, s, theta, flip, cx, cy)
    return Scene(image=image, parts=parts, object=(parts > 0).astype(np.uint8), cls=ci, seed=int(seed),
                 keypoints=keypoints)


def _image_keypoints(cls: str, points: dict[str, tuple[float, float]], size: int, s: float, theta: float,
                     flip: float, cx: float, cy: float) -> np.ndarray:
    """Object-coordinate ``points`` through the inverse of the scene's pose into pixels, ``[K,3]``.
    A mirrored scene swaps the names of left/right pairs: the subject faces the other way."""
    swap = {a: b for pair in KEYPOINT_FLIP_PAIRS.get(cls, ()) for a, b in (pair, pair[::-1])} if flip < 0 else {}
    out = np.zeros((len(KEYPOINTS.get(cls, ())), 3), np.float32)
    cos, sin = np.cos(theta), np.sin(theta)
    for k, name in enumerate(keypoint_names(cls)):
        pu, pv = points[swap.get(name, name)]
        a = pu * flip  # u = a·flip, (a, v) the rotated offset from the centre
        gx, gy = cx + s * (cos * a - sin * pv), cy + s * (sin * a + cos * pv)
        x, y = (gx + 1.0) * 0.5 * size - 0.5, (gy + 1.0) * 0.5 * size - 0.5
        inside = -0.5 <= x < size - 0.5 and -0.5 <= y < size - 0.5
        out[k] = (x, y, 2.0 if inside else 1.0)
    return out


def render_batch(seeds, cls: int | str, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render many scenes of one class: images ``[N,H,W,3]``, parts, objects ``[N,H,W]``."""
    scenes = [render(s, cls, size) for s in seeds]
    return (
        np.stack([sc.image for sc in scenes]),
        np.stack([sc.parts for sc in scenes]),
        np.stack([sc.object for sc in scenes]),
    )


def sample_sheet(path, size: int = 64, per_class: int = 8, seed0: int = 0) -> None:
    """Write a PNG grid: for each class a row of images and a row of part masks."""
    from PIL import Image

    rows = []
    for ci, _ in enumerate(CLASSES):
        imgs, parts, _ = render_batch(range(seed0, seed0 + per_class), ci, size)
        rows.append(np.concatenate(list(imgs), axis=1))
        rows.append(np.concatenate([colorize_labels(p) for p in parts], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
