"""Rule train_downstream: one segmentation run of a setting and seed."""
from labelfactory.downstream.class_aware import ClassAwareLabels
from labelfactory.downstream.experiment import SettingInputs, seg_config, train_downstream
from labelfactory.downstream.real import RealDataSpec
from labelfactory.config import check_downstream_files
from labelfactory.core.runtime import resolve_device, snakemake_job

with snakemake_job(snakemake):
    check_downstream_files(snakemake.config, snakemake.wildcards.task)  # the real data, weights, ...
    p = snakemake.params
    real = p.real
    inputs = SettingInputs(annotations=snakemake.input.annotations,
                           real=RealDataSpec.from_dict(real) if real else None,
                           manifest=snakemake.input.manifest[0] if snakemake.input.manifest else None,
                           class_aware=ClassAwareLabels.from_dict(p.class_aware) if p.class_aware else None,
                           combined=tuple(snakemake.input.manifest[1:]),
                           **{k: p.options[k] for k in ("annotation_share", "uncertain_pixels") if k in p.options})
    cfg = seg_config(p.options, seed=int(snakemake.wildcards.seed), threads=snakemake.threads)
    train_downstream(snakemake.wildcards.setting, inputs, cfg, snakemake.output.weights,
                     device=resolve_device(snakemake.params.device), on_divergence=snakemake.config["on_divergence"])
