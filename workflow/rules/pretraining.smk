"""BigDatasetGAN's transfer experiment (config `pretraining`; target `snakemake pretraining`, never
part of `all`): pretrain a backbone per init, finetune it on every target per data fraction and seed with
detectron2's Mask R-CNN (box and mask AP) and the project's DeepLabV3 (mIoU), as the target's tasks say,
tabulate and plot."""


rule pretrain_backbone:
    """One init's backbone (pretrained under the common budget, or given): detectron2 .pkl + torchvision .pth."""
    input:
        unpack(pretrain_files),
    output:
        detectron2=f"{TRANSFER}/backbones/{{init}}/backbone.pkl",
        torchvision=f"{TRANSFER}/backbones/{{init}}/backbone.pth",
        info=f"{TRANSFER}/backbones/{{init}}/pretrain.json",
    params:
        method=lambda w: init_of(w).method,
        options=lambda w: {**PRE.pretrain, "arch": PRE.arch},
        class_aware=lambda w: class_aware_labels(CFG.tasks[init_of(w).task]) if init_of(w).task else None,
        real=lambda w: init_of(w).real if init_of(w).method == "classification" else None,
        device=CFG.device,
    log:
        "results/logs/pretrain_backbone/{init}.log",
    threads: PRE.threads if PRE else 1
    resources:
        mem_mb=attempt_scaled(8000),
        runtime=attempt_scaled(600),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/pretrain_backbone.py"


rule toy_scenes:
    """A toy_scenes target's split: multi-object scenes with instance masks as COCO JSON + PNGs."""
    output:
        directory(f"{TRANSFER}/scenes/{{target}}/{{split}}"),
    params:
        spec=lambda w: {k: target_of(w).data[k] for k in ("size", "objects", "scale", "min_visible")},
        seeds=lambda w: [target_of(w).data[f"{w.split}_seed_start"], target_of(w).data[f"{w.split}_images"]],
    log:
        "results/logs/toy_scenes/{target}/{split}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/toy_scenes.py"


rule target_data:
    """A voc, cityscapes or chest_xray target's split as COCO JSON (RLE instance masks, where its tasks
    need them) + PNGs with semantic mask PNGs (labelfactory.downstream.targets.write_target)."""
    input:
        lambda w: target_of(w).data["path"],
    output:
        directory(f"{TRANSFER}/converted/{{target}}/{{split}}"),
    params:
        type=lambda w: target_of(w).type,
        data=lambda w: {k: target_of(w).data[k] for k in ("path", "splits")},  # what the conversion reads
        instances=lambda w: "instance" in target_of(w).tasks,
    log:
        "results/logs/target_data/{target}/{split}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/target_data.py"


rule downstream_subset:
    """A nested fraction of a target's split as COCO JSON with absolute image paths."""
    input:
        downstream_source,
    output:
        f"{TRANSFER}/data/{{target}}/{{split}}-{{fraction}}.json",
    params:
        source=lambda w, input: downstream_json(w, input[0]),
        seed=PRE.subset_seed if PRE else 0,
    log:
        "results/logs/downstream_subset/{target}/{split}-{fraction}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/downstream_subset.py"


rule finetune:
    """detectron2 Mask R-CNN (FPN) from one backbone on one target, fraction and seed: box and mask AP.
    Its GPU count (resources.gpu) is detectron2's launcher's world size."""
    input:
        weights=f"{TRANSFER}/backbones/{{init}}/backbone.pkl",
        train=f"{TRANSFER}/data/{{target}}/train-{{fraction}}.json",
        test=f"{TRANSFER}/data/{{target}}/test-1.json",
    output:
        f"{TRANSFER}/detection/{{target}}/{{init}}/{{fraction}}/seed{{seed}}/results.json",
    params:
        options=lambda w: {**PRE.detection, "depth": int(PRE.arch.removeprefix("resnet"))},
        device=CFG.device,
    log:
        "results/logs/finetune/{target}/{init}/{fraction}/seed{seed}.log",
    threads: PRE.threads if PRE else 1
    resources:
        mem_mb=attempt_scaled(8000),
        runtime=attempt_scaled(720),
        gpu=GPUS * (PRE.gpus if PRE else 1),
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/finetune_detection.py"


rule finetune_semantic:
    """The project's DeepLabV3 with the backbone's trunk on one target, fraction and seed: mIoU."""
    input:
        weights=f"{TRANSFER}/backbones/{{init}}/backbone.pth",
        train=f"{TRANSFER}/data/{{target}}/train-{{fraction}}.json",
        test=f"{TRANSFER}/data/{{target}}/test-1.json",
    output:
        f"{TRANSFER}/semantic/{{target}}/{{init}}/{{fraction}}/seed{{seed}}/results.json",
    params:
        options=lambda w: PRE.semantic,
        arch=PRE.arch if PRE else None,
        size=lambda w: target_of(w).data["resize"],
        device=CFG.device,
    log:
        "results/logs/finetune_semantic/{target}/{init}/{fraction}/seed{seed}.log",
    threads: PRE.threads if PRE else 1
    resources:
        mem_mb=attempt_scaled(8000),
        runtime=attempt_scaled(240),
        gpu=GPUS,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/finetune_semantic.py"


rule pretraining_table:
    """Mean ± sd over seeds per target × init × fraction (CSV + Markdown) and the data-efficiency figure."""
    input:
        lambda w: [r[k] for r in transfer_runs() for k in ("detection", "semantic") if k in r],
    output:
        csv=report(f"{TRANSFER}/report/pretraining_table.csv", caption="../report/pretraining_table.rst",
                   category="Pretraining"),
        md=f"{TRANSFER}/report/pretraining_table.md",
        runs=f"{TRANSFER}/report/runs.csv",
        figure=report(f"{TRANSFER}/report/data_efficiency.png", caption="../report/data_efficiency.rst",
                      category="Pretraining"),
    params:
        runs=lambda w: transfer_runs(),
    log:
        "results/logs/pretraining_table.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/labelfactory.yaml"
    script:
        "../../scripts/pretraining_table.py"


rule pretraining:
    """The transfer experiment's target: `make pretraining` (the toy world), or `TARGETS=pretraining`."""
    input:
        f"{TRANSFER}/report/pretraining_table.md",
        f"{TRANSFER}/report/data_efficiency.png",


localrules:
    pretraining,
    pretraining_table,
    downstream_subset,
