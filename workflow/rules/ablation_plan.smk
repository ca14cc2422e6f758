"""The ablations' plans (config `ablations:`) and the functions ablation.smk's rules call."""

from pathlib import Path

from labelfactory.experiments.ablations import ABLATIONS, AblationPlan, Variant, count_annotations

PLANS = {name: AblationPlan(CFG.tasks[name], spec, count_annotations(
             CFG.tasks[name].annotations, CFG.tasks[name].annotation.expected_count or
             CFG.tasks[name].annotation.num_samples))
         for name, spec in config["ablations"].items()}
ABL = "results/ablations/{task}/{variant}"
RUN = f"{ABL}/n{{size}}-f{{ratio}}"
# variants that label their own synthetic set (retrain the interpreter), and all with files of their own
RETRAIN_VARIANT = r"ann\d+-\d+|manual\d+|(random|uncertainty)\d+-\d+|interp-[A-Za-z0-9][A-Za-z0-9_.-]*"
OWN_VARIANT = rf"{RETRAIN_VARIANT}|down-[A-Za-z0-9][A-Za-z0-9_.-]*"
SELECTION_VARIANT = r"(random|uncertainty)\d+-\d+"
DEFAULT_CALIBRATION_RATIOS = (0.05, 0.1, 0.2)
FIGURE_RULES = ["main_table", "sample_grid", "class_grid", "label_quality", "calibration", "ablation_report"]


def plan(w):
    return PLANS[w.task]


def variant(w):
    return Variant.parse(w.variant)


def previous(w):
    return plan(w).previous(w.variant)


def calibration_ratios(task):
    """The filter ratios the calibration figure marks: the filter ablation's, else a default set."""
    ratios = PLANS[task.name].spec["filter_ratio"] if task.name in PLANS else DEFAULT_CALIBRATION_RATIOS
    return sorted({float(r) for r in ratios if r > 0} | {task.filter_ratio} - {0.0})


def ablation_targets():
    """Every configured ablation's figure, and the calibration figure of each ablated task."""
    targets = []
    for name, p in PLANS.items():
        targets += [f"results/ablations/{name}/report/{a}.png" for a in p.enabled()]
        if CFG.tasks[name].downstream.reference_annotator:
            targets.append(f"results/{name}/report/calibration.png")
    return targets


def existing_figures():
    """Every table and figure whose results are already there (what `figures` redraws)."""
    def have(paths):
        return all(Path(p).exists() for p in paths)

    targets = []
    for name in TASKS:
        task, manifest = CFG.tasks[name], f"results/{name}/manifest.parquet"
        if not have([manifest]):
            continue
        targets.append(f"results/{name}/report/samples.png")
        if task.conditional:
            targets.append(f"results/{name}/report/samples_by_class.png")
        scores = task_scores(name) + [s for other in task.downstream.compare for s in task_scores(other)]
        if task.downstream.enabled and have(scores):
            targets.append(f"results/{name}/report/main_table.md")
        if task.downstream.reference_annotator:
            targets += [f"results/{name}/report/uncertainty_vs_error.png", f"results/{name}/report/calibration.png"]
    for name, p in PLANS.items():
        targets += [f"results/ablations/{name}/report/{a}.png" for a in p.enabled() if have(p.points(a)["path"])]
    return targets
