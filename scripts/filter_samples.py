"""Rule filter: gather every shard's scores, drop the most uncertain share, write the manifest."""
from labelfactory.synthesis.filtering import filter_manifest, write_manifest
from labelfactory.core.runtime import snakemake_job
from labelfactory.synthesis.shards import read_shard_scores

with snakemake_job(snakemake):
    manifest = filter_manifest(read_shard_scores(list(snakemake.input.shards)), snakemake.params.ratio)
    write_manifest(manifest, snakemake.output[0])
