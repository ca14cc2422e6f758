"""Rule pretraining_table: the transfer table (mean ± sd over seeds) and the data-efficiency figure."""
from labelfactory.experiments.reporting import collect_transfer, plot_data_efficiency, write_transfer_table
from labelfactory.core.runtime import snakemake_job

with snakemake_job(snakemake):
    runs = collect_transfer(snakemake.params.runs)
    write_transfer_table(runs, snakemake.output.csv, snakemake.output.md, snakemake.output.runs)
    plot_data_efficiency(runs, snakemake.output.figure)
