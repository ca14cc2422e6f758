"""Resumable, verifiable exports: pieces journaled with their checksums, a checksum list at the end.

An export is a sequence of *pieces* (a tar shard, a Parquet file, a block of image files),
each written to temporary names and renamed when complete (:func:`~labelfactory.core.io.atomic_path`),
so no half-written file ever carries a final name. After each piece the journal
(``.export-journal.jsonl``, first line the export's settings) gets one line with the sha256 of
each of its files. A re-run with the same settings keeps every journaled piece whose files still
match their checksums and redoes the rest. At the end ``export.json`` (the settings and the
export's files) and ``SHA256SUMS`` (``sha256sum -c`` format, every file) replace the journal;
``SHA256SUMS`` is written last and marks a finished export.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from labelfactory.core.io import atomic_write_json, atomic_write_text, sha256_file

CHECKSUMS, JOURNAL, SETTINGS = "SHA256SUMS", ".export-journal.jsonl", "export.json"


class ExportConflict(ValueError):
    """The output folder holds an export made with other settings."""


class Journal:
    """The pieces of one export in ``out`` already written, for the export ``settings`` (JSON-able).
    A folder holding an export of other settings (finished or not) is refused, so nothing is
    mixed, unless ``replace``: then that export's files are deleted first. ``finished``: the export
    was finished and every file still matches ``SHA256SUMS``."""

    def __init__(self, out: str | os.PathLike, settings: dict, replace: bool = False):
        self.out = Path(out)
        self.settings = json.loads(json.dumps(settings, sort_keys=True))
        journal = _complete_lines(self.out / JOURNAL)
        previous = json.loads((self.out / SETTINGS).read_text()) if (self.out / SETTINGS).exists() else None
        if previous is not None and previous["settings"] != self.settings:
            self._other_export(previous["settings"], [*previous["files"], SETTINGS, CHECKSUMS], replace)
            previous = None
        if journal and journal[0] != self.settings:
            self._other_export(journal[0], [n for e in journal[1:] for n in e["files"]] + [JOURNAL], replace)
            journal = []
        self.finished = previous is not None and (self.out / CHECKSUMS).exists() and \
            _verified(self.out, read_checksums(self.out / CHECKSUMS))
        self.pieces = {e["piece"]: e["files"] for e in journal[1:]}
        self._opened = self.finished

    def _open(self) -> None:
        """Before the first write: drop an outdated ``SHA256SUMS``, start the journal anew (the
        settings and the pieces still journaled; a torn last line dropped). Nothing is written
        before, so an export refused up front leaves nothing behind."""
        if not self._opened:
            (self.out / CHECKSUMS).unlink(missing_ok=True)  # a file changed since: export again
            atomic_write_text(self.out / JOURNAL, "".join(
                json.dumps(e, sort_keys=True) + "\n"
                for e in [self.settings, *({"piece": p, "files": f} for p, f in self.pieces.items())]))
            self._opened = True

    def _other_export(self, settings: dict, files: list[str], replace: bool) -> None:
        """Refuse the export of other ``settings`` found in ``out``, or with ``replace`` delete its ``files``."""
        if not replace:
            raise ExportConflict(f"{self.out} holds an export with other settings "
                                 f"({json.dumps(settings, sort_keys=True)}); choose another output folder or delete it")
        for name in files:
            (self.out / name).unlink(missing_ok=True)

    def checksums(self) -> dict[str, str]:
        """The finished export's ``SHA256SUMS`` as ``{relative path: sha256}``."""
        return read_checksums(self.out / CHECKSUMS)

    def done(self, piece: str) -> bool:
        """Whether ``piece`` was journaled and each of its files still has its checksum."""
        return piece in self.pieces and _verified(self.out, self.pieces[piece])

    def record(self, piece: str, files: Iterable[str | os.PathLike]) -> None:
        """Journal ``piece`` as written, with the sha256 of each of its ``files`` (paths under ``out``)."""
        sums = {Path(f).relative_to(self.out).as_posix(): sha256_file(f) for f in files}
        self._open()
        with open(self.out / JOURNAL, "a") as f:
            f.write(json.dumps({"piece": piece, "files": sums}, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.pieces[piece] = sums

    def finish(self, files: Iterable[str | os.PathLike] = ()) -> dict[str, str]:
        """Write ``export.json`` and then ``SHA256SUMS`` over every journaled file plus ``files``
        (paths under ``out``); remove the journal. Returns the checksums by relative path."""
        self._open()
        sums = {name: sha for piece in self.pieces.values() for name, sha in piece.items()}
        sums.update({Path(f).relative_to(self.out).as_posix(): sha256_file(f) for f in files})
        atomic_write_json(self.out / SETTINGS, {"settings": self.settings, "files": sorted(sums)})
        sums[SETTINGS] = sha256_file(self.out / SETTINGS)
        atomic_write_text(self.out / CHECKSUMS, "".join(f"{sums[k]}  {k}\n" for k in sorted(sums)))
        (self.out / JOURNAL).unlink(missing_ok=True)
        self.finished = True
        return sums


def read_checksums(path: str | os.PathLike) -> dict[str, str]:
    """A ``SHA256SUMS`` file as ``{relative path: sha256}``."""
    sums = {}
    for line in Path(path).read_text().splitlines():
        sha, name = line.split("  ", 1)
        sums[name] = sha
    return sums


def _verified(out: Path, sums: dict[str, str]) -> bool:
    return all((out / name).is_file() and sha256_file(out / name) == sha for name, sha in sums.items())


def _complete_lines(path: Path) -> list[dict]:
    """The journal's lines up to the first torn one (a line cut by a kill is not JSON); none without it."""
    entries = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return entries
