"""Label sets (``labels.yaml``) and the error every annotation check reports into.

``labels.yaml`` names the mask labels (``names``, ``ignore_index``) and, optionally, keypoints::

    keypoints:
      names: [left_eye, right_eye, nose]
      flip_pairs: [[left_eye, right_eye]]   # swapped by a horizontal flip
      skeleton: [[left_eye, nose], [right_eye, nose]]   # edges drawn between keypoints
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

LABELS_FILE = "labels.yaml"


class AnnotationError(ValueError):
    """Invalid annotations: ``problems`` lists every one as ``<file>: <problem>``."""

    def __init__(self, source: str | os.PathLike, problems: Sequence[str]):
        self.source = str(source)
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in {self.source}:\n  " + "\n  ".join(self.problems))

    def __reduce__(self):  # picklable across processes despite the two-argument constructor
        return type(self), (self.source, self.problems)


def _label_problems(names, ignore_index) -> list[str]:
    if not isinstance(names, (list, tuple)):
        return [f"'names' must be a list of label names, got {type(names).__name__}"]
    problems = []
    if not 2 <= len(names) <= 255:
        problems.append(f"need 2 to 255 label names, got {len(names)}")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        problems.append(f"label names must be non-empty strings, got {bad}")
    dup = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if dup:
        problems.append(f"duplicate label names {dup}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        problems.append(f"ignore_index must be an integer, got {ignore_index!r}")
    elif not len(names) <= ignore_index <= 255:
        problems.append(f"ignore_index {ignore_index} must lie outside the label ids 0..{len(names) - 1} "
                        "and fit in a uint8 mask (<= 255)")
    return problems


KEYPOINT_KEYS = ("names", "flip_pairs", "skeleton")


def _name_pairs(key: str, pairs, names: Sequence[str]) -> list[str]:
    """Problems of ``keypoints.<key>``: a list of two-name lists naming known, distinct keypoints."""
    if not isinstance(pairs, (list, tuple)):
        return [f"keypoints.{key} must be a list of [name, name] pairs, got {type(pairs).__name__}"]
    problems = []
    for i, pair in enumerate(pairs):
        where = f"keypoints.{key}[{i}]"
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            problems.append(f"{where} must be a pair of keypoint names, got {pair!r}")
            continue
        unknown = [n for n in pair if n not in names]
        if unknown:
            problems.append(f"{where} names unknown keypoints {unknown}")
        elif pair[0] == pair[1]:
            problems.append(f"{where} pairs keypoint {pair[0]!r} with itself")
    return problems


def keypoint_problems(doc) -> list[str]:
    """Every problem of a ``keypoints`` section (a mapping with ``names``, optional ``flip_pairs``
    and ``skeleton``), one line each naming its key."""
    if not isinstance(doc, dict) or "names" not in doc:
        return ["keypoints must be a mapping with a 'names' list"]
    unknown = sorted(set(doc) - set(KEYPOINT_KEYS))
    problems = [f"keypoints: unknown keys {unknown}"] if unknown else []
    names = doc["names"]
    if not isinstance(names, (list, tuple)) or not names:
        return problems + [f"keypoints.names must be a non-empty list of names, got {names!r}"]
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        problems.append(f"keypoints.names must be non-empty strings, got {bad}")
    dup = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if dup:
        problems.append(f"keypoints.names has duplicates {dup}")
    for key in ("flip_pairs", "skeleton"):
        problems += _name_pairs(key, doc.get(key, []), names)
    pairs = doc.get("flip_pairs", [])
    flipped = [n for pair in (pairs if isinstance(pairs, (list, tuple)) else [])
               if isinstance(pair, (list, tuple)) and len(pair) == 2 and pair[0] != pair[1] for n in pair]
    twice = sorted({n for n in flipped if isinstance(n, str) and flipped.count(n) > 1})
    if twice:
        problems.append(f"keypoints.flip_pairs names {twice} in more than one pair")
    return problems


@dataclass(frozen=True)
class KeypointSpec:
    """Keypoint names (index = position in a keypoint array), the pairs a horizontal flip swaps,
    and the skeleton's edges (pairs of names)."""

    names: tuple[str, ...]
    flip_pairs: tuple[tuple[str, str], ...] = ()
    skeleton: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        problems = keypoint_problems(self.as_dict())
        if problems:
            raise ValueError("invalid keypoints: " + "; ".join(problems))
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "flip_pairs", tuple(tuple(p) for p in self.flip_pairs))
        object.__setattr__(self, "skeleton", tuple(tuple(p) for p in self.skeleton))

    def as_dict(self) -> dict:
        """The ``keypoints`` section of ``labels.yaml`` (lists, for YAML and JSON)."""
        return {"names": list(self.names), "flip_pairs": [list(p) for p in self.flip_pairs],
                "skeleton": [list(p) for p in self.skeleton]}

    @classmethod
    def from_dict(cls, doc: dict) -> "KeypointSpec":
        return cls(tuple(doc["names"]), tuple(doc.get("flip_pairs", ())), tuple(doc.get("skeleton", ())))

    def flip_permutation(self) -> list[int]:
        """For each keypoint, the index of the one it becomes under a horizontal flip."""
        partner = {a: b for pair in self.flip_pairs for a, b in (pair, pair[::-1])}
        return [self.names.index(partner.get(n, n)) for n in self.names]


@dataclass(frozen=True)
class LabelSet:
    """Label names (index = label id in the masks), the mask value to ignore and, if the
    annotations have them, the keypoints."""

    names: tuple[str, ...]
    ignore_index: int = 255
    keypoints: KeypointSpec | None = None

    def __post_init__(self):
        problems = _label_problems(self.names, self.ignore_index)
        if problems:
            raise ValueError("invalid label set: " + "; ".join(problems))
        object.__setattr__(self, "names", tuple(self.names))

    def as_dict(self) -> dict:
        """The ``labels.yaml`` document: ``names``, ``ignore_index`` and, where there are any, ``keypoints``."""
        doc = {"names": list(self.names), "ignore_index": self.ignore_index}
        return doc if self.keypoints is None else {**doc, "keypoints": self.keypoints.as_dict()}


def _read_labels(path: Path) -> tuple[LabelSet | None, list[str]]:
    """The label set in ``path`` and, if none could be made, why not."""
    if not path.is_file():
        return None, [f"{path.name}: missing (label names are required)"]
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return None, [f"{path.name}: unreadable YAML ({e})"]
    if not isinstance(doc, dict) or "names" not in doc:
        return None, [f"{path.name}: must be a mapping with a 'names' list"]
    unknown = sorted(set(doc) - {"names", "ignore_index", "keypoints"})
    problems = [f"unknown keys {unknown}"] if unknown else []
    problems += _label_problems(doc["names"], doc.get("ignore_index", 255))
    if "keypoints" in doc:
        problems += keypoint_problems(doc["keypoints"])
    if problems:
        return None, [f"{path.name}: {p}" for p in problems]
    spec = KeypointSpec.from_dict(doc["keypoints"]) if "keypoints" in doc else None
    return LabelSet(tuple(doc["names"]), doc.get("ignore_index", 255), spec), []


def resolve_labels(labels: LabelSet | str | os.PathLike | None, default: Path,
                   problems: list[str]) -> LabelSet | None:
    """``labels`` itself, or the label set read from its path (``default`` if None);
    None, with the reasons added to ``problems``, if it cannot be read."""
    if isinstance(labels, LabelSet):
        return labels
    labelset, label_problems = _read_labels(Path(labels) if labels is not None else default)
    problems += label_problems
    return labelset


def load_labels(path: str | os.PathLike) -> LabelSet:
    """Read ``labels.yaml`` (``names``, optional ``ignore_index`` and ``keypoints``); raises
    :class:`AnnotationError` naming every problem."""
    labels, problems = _read_labels(Path(path))
    if problems:
        raise AnnotationError(path, problems)
    return labels
