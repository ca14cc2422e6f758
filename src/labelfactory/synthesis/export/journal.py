"""Resumable, verifiable exports: pieces journaled with their checksums, a checksum list at the end.

An export is a sequence of *pieces* (a tar shard, a Parquet file, a block of image files),
each written to temporary names and renamed when complete (:func:`~labelfactory.core.io.atomic_path`),
so no half-written file ever carries a final name. After each piece the journal
(``.export-journal.jsonl``) gets one line with the sha256 of each of its files. A re-run with the
same settings keeps every journaled piece whose files still match their checksums and redoes the
rest; at the end ``SHA256SUMS`` (``sha256sum -c`` format, every file of the export) replaces the
journal, and its presence marks a finished export.
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
    """The pieces of one export in ``out`` already written, for the export ``settings`` (JSON-able;
    a folder holding another export's journal or finished files is refused, nothing is mixed, unless
    ``replace``: then that export's files are deleted first). ``finished``: the export was finished and every file still matches ``SHA256SUMS``."""

    def __init__(self, out: str | os.PathLike, settings: dict, replace: bool = False):
        self.out = Path(out)
        self.settings = json.loads(json.dumps(settings, sort_keys=True))
        self.out.mkdir(parents=True, exist_ok=True)
        if replace:
            self._remove_other_export()
        self.pieces: dict[str, dict[str, str]] = {}
        if (self.out / CHECKSUMS).exists():
            self._check_settings(json.loads((self.out / SETTINGS).read_text()))
            self.finished = _verified(self.out, read_checksums(self.out / CHECKSUMS))
            if self.finished:
                return
            (self.out / CHECKSUMS).unlink()  # a file changed since: export again
        self.finished = False
        lines = _complete_lines(self.out / JOURNAL)
        if lines:
            self._check_settings(lines[0])
            self.pieces = {entry["piece"]: entry["files"] for entry in lines[1:]}
        atomic_write_text(self.out / JOURNAL, "".join(json.dumps(e, sort_keys=True) + "\n"
                                                      for e in [self.settings, *lines[1:]]))

    def _remove_other_export(self) -> None:
        """Delete the files of an export with other settings in ``out`` (those its checksum list or
        journal names, and those two files)."""
        sums, journal = self.out / CHECKSUMS, _complete_lines(self.out / JOURNAL)
        if sums.exists() and json.loads((self.out / SETTINGS).read_text()) != self.settings:
            names = [*read_checksums(sums), CHECKSUMS]
        elif journal and journal[0] != self.settings:
            names = [name for entry in journal[1:] for name in entry["files"]] + [JOURNAL]
        else:
            return
        for name in names:
            (self.out / name).unlink(missing_ok=True)

    def _check_settings(self, found: dict) -> None:
        if found != self.settings:
            raise ExportConflict(f"{self.out} holds an export with other settings ({json.dumps(found, sort_keys=True)}); "
                                 "choose another output folder or delete it")

    def checksums(self) -> dict[str, str]:
        """The finished export's ``SHA256SUMS`` as ``{relative path: sha256}``."""
        return read_checksums(self.out / CHECKSUMS)

    def done(self, piece: str) -> bool:
        """Whether ``piece`` was journaled and each of its files still has its checksum."""
        return piece in self.pieces and _verified(self.out, self.pieces[piece])

    def record(self, piece: str, files: Iterable[str | os.PathLike]) -> None:
        """Journal ``piece`` as written, with the sha256 of each of its ``files`` (paths under ``out``)."""
        sums = {Path(f).relative_to(self.out).as_posix(): sha256_file(f) for f in files}
        with open(self.out / JOURNAL, "a") as f:
            f.write(json.dumps({"piece": piece, "files": sums}, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.pieces[piece] = sums

    def finish(self, files: Iterable[str | os.PathLike] = ()) -> dict[str, str]:
        """Write ``export.json`` (the settings) and ``SHA256SUMS`` over every journaled file plus
        ``files``; remove the journal. Returns the checksums by relative path."""
        atomic_write_json(self.out / SETTINGS, self.settings)
        sums = {name: sha for piece in self.pieces.values() for name, sha in piece.items()}
        for f in [*files, self.out / SETTINGS]:
            sums[Path(f).relative_to(self.out).as_posix()] = sha256_file(f)
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
