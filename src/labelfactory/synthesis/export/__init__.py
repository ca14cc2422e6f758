"""Exports of a task's synthetic set in the formats trainers read, streamed from its shards:
WebDataset tar shards, a Hugging Face ``datasets`` Parquet dataset, VOC-style folders, and (from
:mod:`labelfactory.downstream.coco_export`, which registers it) COCO JSON with RLE masks.

Every export is resumable and verifiable (:mod:`.journal`): pieces written under temporary names
and renamed, journaled with their checksums, and a ``SHA256SUMS`` list at the end. See docs/export.md.
"""

from labelfactory.synthesis.export.base import EXPORTERS, ExportOptions, TaskInfo
from labelfactory.synthesis.export.journal import CHECKSUMS, ExportConflict
from labelfactory.synthesis.export.run import export_task
from labelfactory.synthesis.export.task import task_info

__all__ = ["CHECKSUMS", "EXPORTERS", "ExportConflict", "ExportOptions", "TaskInfo", "export_task", "task_info"]
