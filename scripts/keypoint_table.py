"""Rule keypoint_table: gather the detector runs' scores into the keypoint table."""
from labelfactory.core.runtime import snakemake_job
from labelfactory.experiments.keypoint_report import collect_keypoint_scores, write_keypoint_table

with snakemake_job(snakemake):
    out = snakemake.output
    write_keypoint_table(collect_keypoint_scores(list(snakemake.input)), out.csv, out.md, out.runs,
                         snakemake.params.real)
