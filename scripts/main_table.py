"""Rule main_table: gather the runs' scores into the main table and the per-class IoU figure."""
from labelfactory.experiments.reporting import collect_scores, plot_per_class_iou, write_main_table
from labelfactory.core.runtime import snakemake_job

with snakemake_job(snakemake):
    runs = collect_scores(list(snakemake.input), snakemake.params.variants)
    write_main_table(runs, snakemake.output.csv, snakemake.output.md, snakemake.output.runs, snakemake.params.real)
    plot_per_class_iou(runs, snakemake.output.figure)
