"""Rule fetch_checkpoint: download (resumable), verify sha256, convert to safetensors + sidecar."""
from pathlib import Path

from labelfactory.generators.fetch import fetch_checkpoint
from labelfactory.core.runtime import snakemake_job

with snakemake_job(snakemake):
    p = snakemake.params
    fetch_checkpoint(p.url, Path(snakemake.output.weights), sha256=p.sha256, fmt=p.format,
                     download_dir=Path(p.download_dir), generator=p.generator, model_flags=p.model_flags)
