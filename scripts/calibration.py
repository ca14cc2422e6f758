"""Rule calibration: per-image uncertainty against label error with each filter ratio's threshold."""
import pandas as pd

from labelfactory.ablations import write_calibration
from labelfactory.manifest import read_manifest
from labelfactory.runtime import snakemake_job

with snakemake_job(snakemake):
    write_calibration(read_manifest(snakemake.input.manifest), pd.read_csv(snakemake.input.errors),
                      snakemake.params.ratios, snakemake.output.csv, snakemake.output.figure)
