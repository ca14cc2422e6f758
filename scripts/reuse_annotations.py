"""Rule reuse_annotations: a VQGAN's or diffusion model's annotations from another task's."""
from labelfactory.toybench.annotator import Annotator
from labelfactory.generators.view import load_task_generator
from labelfactory.core.runtime import resolve_device, snakemake_job
from labelfactory.annotations.reuse import reuse_annotation_file

with snakemake_job(snakemake):
    p, out = snakemake.params, snakemake.output
    backend = load_task_generator(snakemake.input.weights, resolve_device(p.device), **p.generator)
    annotator = Annotator.load(snakemake.input.annotator) if snakemake.input.annotator else None
    reuse_annotation_file(snakemake.input.source, backend, out.annotations, out.report, out.summary,
                          annotator=annotator, min_psnr=p.min_psnr,
                          annotator_classes={int(k): v for k, v in p.annotator_classes.items()},
                          image_class=p.image_class)
