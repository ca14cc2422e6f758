"""The papers' ablations (config `ablations:`), the calibration figure, and `figures`.

`snakemake ablations` builds every configured ablation (never part of `all`);
`snakemake figures` redraws every table and figure whose results exist (see
docs/ablations.md). A variant's stages reuse the task's own rules through
`use rule ... with:`; labelfactory.experiments.ablations names the variants and their files.
"""


wildcard_constraints:
    variant=rf"base|{OWN_VARIANT}",
    size=r"\d+",
    ratio=r"0|0?\.\d+",
    ablation="|".join(ABLATIONS),


localrules:
    ablations,
    figures,
    ablation_annotations,
    ablation_report,
    calibration,


rule ablation_annotations:
    """A variant's annotations: a random subset of the task's, their first k (manual), or a selection round's union."""
    input:
        lambda w: plan(w).annotation_sources(w.variant),
    output:
        f"{ABL}/annotations.h5",
    params:
        keep=lambda w: variant(w).keep,
        draw=lambda w: variant(w).subset_draw,
    log:
        "results/logs/ablations/{task}/{variant}/annotations.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    wildcard_constraints:
        variant=rf"ann\d+-\d+|manual\d+|{SELECTION_VARIANT}",
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/ablation_annotations.py"


use rule sample_for_annotation as ablation_select with:
    input:
        weights=checkpoint_weights,
        average_latent=average_latent_file,
        interpreter=lambda w: [plan(w).interpreter_weights(previous(w))] if variant(w).method == "uncertainty" else [],
        annotated=lambda w: [plan(w).annotations(previous(w))],
    output:
        directory(f"{ABL}/for_annotation"),
    params:
        selection=lambda w: pool_selection(task_of(w), variant(w).method, plan(w).spec["selection"]["step"],
                                           draw=variant(w).draw),
    log:
        "results/logs/ablations/{task}/{variant}/select.log",
    wildcard_constraints:
        variant=SELECTION_VARIANT,


rule simulated_annotator:
    """The toy world's simulated human labels a selection round's picks."""
    input:
        samples=f"{ABL}/for_annotation",
        annotator=lambda w: task_of(w).downstream.reference_annotator,
    output:
        directory(f"{ABL}/annotated"),
    params:
        cls=lambda w: toy_classes(task_of(w)),
    log:
        "results/logs/ablations/{task}/{variant}/simulated_annotator.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    wildcard_constraints:
        variant=SELECTION_VARIANT,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/simulated_annotator.py"


use rule import_annotations as ablation_import_picks with:
    input:
        weights=checkpoint_weights,
        average_latent=average_latent_file,
        files=f"{ABL}/annotated",
    output:
        f"{ABL}/picked.h5",
    params:
        annotations=lambda w: f"results/ablations/{w.task}/{w.variant}/annotated",
        expected_count=None,
        expected_per_class=None,
    log:
        "results/logs/ablations/{task}/{variant}/import_picks.log",
    wildcard_constraints:
        variant=SELECTION_VARIANT,


use rule extract_features as ablation_extract_features with:
    input:
        weights=checkpoint_weights,
        average_latent=average_latent_file,
        annotations=f"{ABL}/annotations.h5",
    output:
        f"{ABL}/features.h5",
    log:
        "results/logs/ablations/{task}/{variant}/extract_features.log",
    wildcard_constraints:
        variant=SELECTION_VARIANT,


use rule train_interpreter as ablation_train_interpreter with:
    input:
        weights=checkpoint_weights,
        features=lambda w: plan(w).features(w.variant),
        annotations=lambda w: plan(w).annotations(w.variant),
    output:
        weights=f"{ABL}/interpreter.safetensors",
        sidecar=f"{ABL}/interpreter.json",
    params:
        interpreter=lambda w: plan(w).interpreter(w.variant),
    log:
        "results/logs/ablations/{task}/{variant}/train_interpreter.log",
    wildcard_constraints:
        variant=RETRAIN_VARIANT,


use rule synthesize as ablation_synthesize with:
    input:
        weights=checkpoint_weights,
        average_latent=average_latent_file,
        interpreter=f"{ABL}/interpreter.safetensors",
    output:
        f"{ABL}/shards/{{shard}}.h5",
    params:
        interpreter_type=lambda w: plan(w).interpreter(w.variant)["type"],
    log:
        "results/logs/ablations/{task}/{variant}/synthesize/{shard}.log",
    wildcard_constraints:
        variant=RETRAIN_VARIANT,


use rule filter as ablation_filter with:
    input:
        shards=lambda w: plan(w).shards(w.variant, int(w.size)),
    output:
        f"{RUN}/manifest.parquet",
    params:
        ratio=lambda w: float(w.ratio),
    log:
        "results/logs/ablations/{task}/{variant}/n{size}-f{ratio}/filter.log",


use rule train_downstream as ablation_train_downstream with:
    input:
        annotations=lambda w: plan(w).annotations(w.variant),
        manifest=lambda w: [plan(w).manifest(w.variant, int(w.size), float(w.ratio))],
    output:
        weights=f"{RUN}/{{setting}}/seed{{seed}}/model.safetensors",
        sidecar=f"{RUN}/{{setting}}/seed{{seed}}/model.json",
    params:
        options=lambda w: setting_options(plan(w).train_options(w.variant), w.setting),
    log:
        "results/logs/ablations/{task}/{variant}/n{size}-f{ratio}/{setting}/seed{seed}/train.log",


use rule evaluate_downstream as ablation_evaluate_downstream with:
    input:
        weights=f"{RUN}/{{setting}}/seed{{seed}}/model.safetensors",
        annotations=lambda w: plan(w).annotations(w.variant),
    output:
        f"{RUN}/{{setting}}/seed{{seed}}/scores.json",
    log:
        "results/logs/ablations/{task}/{variant}/n{size}-f{ratio}/{setting}/seed{seed}/evaluate.log",


rule ablation_report:
    """One ablation's runs: tidy CSV, mean ± sd summary, seaborn figure."""
    input:
        lambda w: list(PLANS[w.task].points(w.ablation)["path"]),
    output:
        csv="results/ablations/{task}/report/{ablation}.csv",
        summary=report("results/ablations/{task}/report/{ablation}_summary.csv", caption="../report/ablation.rst",
                       category="Ablations", subcategory="{task}"),
        figure=report("results/ablations/{task}/report/{ablation}.png", caption="../report/ablation.rst",
                      category="Ablations", subcategory="{task}"),
    params:
        points=lambda w: PLANS[w.task].points(w.ablation).to_dict("list"),
    log:
        "results/logs/ablations/{task}/report/{ablation}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/ablation_report.py"


rule calibration:
    """Per-image uncertainty against label error with the kept/dropped threshold of each filter ratio."""
    input:
        manifest="results/{task}/manifest.parquet",
        errors="results/{task}/report/label_errors.csv",
    output:
        csv="results/{task}/report/calibration.csv",
        figure=report("results/{task}/report/calibration.png", caption="../report/calibration.rst",
                      category="Synthetic data", subcategory="{task}"),
    params:
        ratios=lambda w: calibration_ratios(task_of(w)),
    log:
        "results/logs/calibration/{task}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/calibration.py"


rule ablations:
    """Every configured ablation (`snakemake ablations`; not part of the default target)."""
    input:
        ablation_targets(),


rule figures:
    """Every table and figure whose results exist, redrawn by the command in docs/ablations.md."""
    input:
        existing_figures(),
