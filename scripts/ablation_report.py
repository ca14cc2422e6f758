"""Rule ablation_report: gather one ablation's runs into a tidy CSV, its summary and its figure."""
import pandas as pd

from labelfactory.experiments.ablations import collect, write_ablation
from labelfactory.core.runtime import snakemake_job

with snakemake_job(snakemake):
    runs = collect(pd.DataFrame(snakemake.params.points))
    write_ablation(runs, snakemake.output.csv, snakemake.output.summary, snakemake.output.figure)
