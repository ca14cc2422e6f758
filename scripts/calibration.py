"""Rule calibration: per-image uncertainty against label error with each filter ratio's threshold."""
import pandas as pd

from labelfactory.experiments.ablations import write_calibration
from labelfactory.synthesis.filtering import read_manifest
from labelfactory.core.runtime import snakemake_job

with snakemake_job(snakemake):
    write_calibration(read_manifest(snakemake.input.manifest), pd.read_csv(snakemake.input.errors),
                      snakemake.params.ratios, snakemake.output.csv, snakemake.output.figure)
