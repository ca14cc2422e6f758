"""Rule export_format: one task's synthetic set in one format (the folder belongs to the workflow:
an export of other settings found there is replaced)."""
from pathlib import Path

from labelfactory.core.runtime import snakemake_job
from labelfactory.downstream import coco_export  # noqa: F401  (registers the coco format)
from labelfactory.synthesis.export import ExportOptions, export_task

with snakemake_job(snakemake):
    options = ExportOptions(**snakemake.params.options, class_names=snakemake.params.class_names)
    export_task(Path(snakemake.input.manifest).parent, snakemake.wildcards.format, Path(snakemake.output[0]).parent,
                options, replace=True)
