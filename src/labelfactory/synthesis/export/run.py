"""Export one task's synthetic set in one format (the ``export`` rule and ``labelfactory export``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from labelfactory.synthesis.dataset import SyntheticDataset
from labelfactory.synthesis.export import huggingface, voc, webdataset  # noqa: F401  (register their formats)
from labelfactory.synthesis.export.base import EXPORTERS, ExportOptions
from labelfactory.synthesis.export.journal import CHECKSUMS, Journal
from labelfactory.synthesis.export.task import task_info

log = logging.getLogger(__name__)


def export_task(task_dir: str | os.PathLike, fmt: str, out: str | os.PathLike,
                options: ExportOptions = ExportOptions(), replace: bool = False) -> dict:
    """Export ``results/<task>`` (``task_dir``) as ``fmt`` (a name of :data:`EXPORTERS`: ``webdataset``,
    ``hf``, ``voc``; ``coco`` once :mod:`labelfactory.downstream.coco_export` is imported) into
    ``out``, resuming an interrupted export of the same settings; ``replace`` deletes an export
    of other settings found there instead of refusing. Returns a summary (``samples``, ``files``,
    ``out``; ``up_to_date`` when a finished export was found)."""
    exporter = EXPORTERS.get(fmt)
    info = task_info(task_dir, options.class_names)
    samples = SyntheticDataset.from_task(task_dir, kept_only=not options.include_dropped,
                                         ignore_uncertain=options.ignore_uncertain)
    settings = {"format": fmt, "options": options.to_dict(), "task": info.to_dict()}
    journal = Journal(out, settings, replace=replace)
    summary = {"format": fmt, "samples": len(samples), "out": str(out)}
    if journal.finished:
        log.info("%s: a finished %s export of these settings is already there", out, fmt)
        return {**summary, "files": len(journal.checksums()), "up_to_date": True}
    sums = journal.finish(exporter(samples, Path(out), info, options, journal))
    log.info("exported %d samples of %s as %s to %s (%d files, checksums in %s)", len(samples), info.name, fmt,
             out, len(sums), CHECKSUMS)
    return {**summary, "files": len(sums), "up_to_date": False}
