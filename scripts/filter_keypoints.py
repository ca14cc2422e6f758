"""Rule filter_keypoints: drop the keypoint samples whose head members disagree most; write the manifest."""
from labelfactory.core.runtime import snakemake_job
from labelfactory.synthesis.filtering import filter_manifest, write_manifest
from labelfactory.synthesis.keypoint_shards import read_keypoint_scores

with snakemake_job(snakemake):
    manifest = filter_manifest(read_keypoint_scores(list(snakemake.input.shards)), snakemake.params.ratio)
    write_manifest(manifest, snakemake.output[0])
