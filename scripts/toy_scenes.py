"""Rule toy_scenes: one split of the multi-object toy scenes as COCO JSON + PNGs."""
from pathlib import Path

from labelfactory.toybench.scenes import SceneSpec, write_toy_scenes
from labelfactory.core.runtime import snakemake_job

with snakemake_job(snakemake):
    start, count = snakemake.params.seeds
    split = snakemake.wildcards.split
    write_toy_scenes(Path(snakemake.output[0]) / f"{split}.json", range(start, start + count),
                     SceneSpec(**snakemake.params.spec))
