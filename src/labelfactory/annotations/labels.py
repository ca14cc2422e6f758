"""Label sets (``labels.yaml``) and the error every annotation check reports into.
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


@dataclass(frozen=True)
class LabelSet:
    """Label names (index = label id in the masks) and the mask value to ignore."""

    names: tuple[str, ...]
    ignore_index: int = 255

    def __post_init__(self):
        problems = _label_problems(self.names, self.ignore_index)
        if problems:
            raise ValueError("invalid label set: " + "; ".join(problems))
        object.__setattr__(self, "names", tuple(self.names))


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
    unknown = sorted(set(doc) - {"names", "ignore_index"})
    problems = [f"unknown keys {unknown}"] if unknown else []
    problems += _label_problems(doc["names"], doc.get("ignore_index", 255))
    if problems:
        return None, [f"{path.name}: {p}" for p in problems]
    return LabelSet(tuple(doc["names"]), doc.get("ignore_index", 255)), []


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
    """Read ``labels.yaml`` (``names``, optional ``ignore_index``); raises
    :class:`AnnotationError` naming every problem."""
    labels, problems = _read_labels(Path(path))
    if problems:
        raise AnnotationError(path, problems)
    return labels
