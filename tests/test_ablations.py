"""Ablations and active learning: selection, the points' shared stages, validation, the DAG."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from labelfactory.experiments.ablations import AblationPlan, Variant, calibration, collect, combine_annotation_sets, summary
from labelfactory.annotations.active_selection import (candidate_seeds, choose_seeds, kcenter_greedy, next_round_seeds,
                                          score_candidates, select_uncertain)
from labelfactory.annotations.annotation_set import AnnotationSet
from labelfactory.annotations.labels import LabelSet
from labelfactory.config import ConfigError, WorkflowConfig, validate_config

from helpers import config_changed, job_counts, make_tiny_project, snakemake, update_config


# -- active learning --------------------------------------------------------------------
def test_uncertainty_selection_picks_the_highest_scores():
    scores = np.array([0.1, 0.9, 0.3, 0.9, 0.5, 0.0])
    assert select_uncertain(scores, 3).tolist() == [1, 3, 4]  # ties: lower index first
    with pytest.raises(ValueError, match="cannot choose 7"):
        select_uncertain(scores, 7)


def test_kcenter_picks_spread_points():
    # two tight clusters and one outlier: k-center takes one point of each, never two neighbours
    pts = np.array([[0, 0], [0.1, 0], [0, 0.1], [10, 10], [10.1, 10], [-20, 5]], dtype=float)
    picked = kcenter_greedy(pts, 3)
    assert picked.tolist() == [0, 5, 4]  # the outlier first (farthest from 0), then the far cluster's edge


def test_diversity_thins_the_most_uncertain_to_spread_ones():
    scores = np.array([1.0, 0.99, 0.98, 0.5, 0.1])
    feats = np.array([[0, 0], [0, 0.01], [5, 5], [9, 9], [0, 1]], dtype=float)
    # without diversity: the near-duplicate 0 and 1; with it (among the top 3): 0 and the far 2
    assert select_uncertain(scores, 2).tolist() == [0, 1]
    assert select_uncertain(scores, 2, feats, oversample=1.5).tolist() == [0, 2]


class _Disagreeing:
    """A stub ensemble whose members disagree by how bright each generated image's first tap is."""

    num_classes = 2

    def member_probabilities(self, features, classes=None):
        f = next(iter(features.values())).float()
        p = torch.sigmoid(f.mean(1, keepdim=True) * 20)  # [B,1,h,w]
        members = torch.stack([torch.cat([p, 1 - p], 1), torch.cat([1 - p, p], 1)])  # opposite members
        return torch.nn.functional.interpolate(members.flatten(0, 1), size=16).unflatten(0, (2, -1))


def test_active_selection_takes_the_pools_most_uncertain_and_skips_annotated(tiny_backend):
    pool = candidate_seeds(100, 12, exclude=[101, 105])
    assert 101 not in pool and 105 not in pool and len(pool) == 10
    scores, pooled = score_candidates(tiny_backend, _Disagreeing(), pool)
    assert pooled.shape[0] == 10 and np.ptp(scores) > 0
    picked = choose_seeds("uncertainty", pool, 3, backend=tiny_backend, interpreter=_Disagreeing())
    assert picked.tolist() == pool[np.argsort(-scores, kind="stable")[:3]].tolist()
    spread = choose_seeds("uncertainty", pool, 3, backend=tiny_backend, interpreter=_Disagreeing(),
                          diversity="kcenter", oversample=3)
    assert spread[0] == picked[0] and len(set(spread)) == 3


def test_random_selection_is_a_seeded_draw_from_the_pool():
    pool = candidate_seeds(0, 50)
    a, b = choose_seeds("random", pool, 5, draw=1), choose_seeds("random", pool, 5, draw=1)
    assert a.tolist() == b.tolist() and set(a) <= set(pool)
    assert choose_seeds("random", pool, 5, draw=2).tolist() != a.tolist()
    with pytest.raises(ValueError, match="uncertainty selection needs"):
        choose_seeds("uncertainty", pool, 5)


def test_a_round_skips_the_annotated_seeds_of_every_set(tmp_path, tiny_backend):
    _set(["a", "b", "c"]).save(tmp_path / "one.h5")  # seeds 0, 1, 2
    selection = {"select": "random", "k": 3, "pool_start": 0, "pool_size": 6, "diversity": "none",
                 "oversample": 1.0, "draw": 0, "interpreter_type": "mlp"}
    assert next_round_seeds(selection, tiny_backend, [tmp_path / "one.h5"]).tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="cannot choose 4 samples from a pool of 3"):
        next_round_seeds({**selection, "k": 4}, tiny_backend, [tmp_path / "one.h5"])


# -- annotation sets of variants ----------------------------------------------------------
def _set(ids, labels=("background", "a")):
    n = len(ids)
    return AnnotationSet(ids=list(ids), seeds=np.arange(n), classes=np.full(n, -1), latents=np.zeros((n, 4)),
                         images=np.zeros((n, 4, 4, 3), np.uint8), masks=np.full((n, 4, 4), 1, np.uint8),
                         labels=LabelSet(labels), generator_hash="g", truncation=1.0, noise="const")


def test_annotation_sets_combine_and_subset():
    both = combine_annotation_sets([_set(["a", "b"]), _set(["c"])])
    assert both.ids == ["a", "b", "c"] and both.masks.shape == (3, 4, 4)
    sub = combine_annotation_sets([_set(list("abcdef"))], keep=3, draw=0)
    assert len(sub) == 3 and sub.ids == sorted(sub.ids)
    assert combine_annotation_sets([_set(list("abcdef"))], keep=3, draw=0).ids == sub.ids
    assert combine_annotation_sets([_set(list("abcdef"))], keep=3, draw=None).ids == ["a", "b", "c"]
    with pytest.raises(ValueError, match="share samples"):
        combine_annotation_sets([_set(["a"]), _set(["a"])])
    with pytest.raises(ValueError, match="differ in labels"):
        combine_annotation_sets([_set(["a"]), _set(["b"], labels=("background", "z"))])


def test_calibration_threshold_splits_kept_from_dropped():
    manifest = pd.DataFrame({"shard": "s", "index": range(10), "seed": range(10), "class": -1,
                             "score": np.arange(10) / 10})
    errors = manifest.assign(error=np.arange(10) / 100, kept=True)
    table = calibration(manifest, errors, [0.2, 0.5])
    assert table["threshold"].tolist() == pytest.approx([0.8, 0.5])
    assert table["dropped"].tolist() == [2, 5]
    assert table.loc[0, "mean_error_dropped"] == pytest.approx(0.085)


# -- the plan: which files each point shares ---------------------------------------------
def _toy_config():
    return yaml.safe_load(open("config/config.yaml"))


def _plan(changes=None):
    cfg = _toy_config()
    cfg["ablations"]["toy-car"].update(changes or {})
    cfg = validate_config(cfg, check_files=False)
    task = WorkflowConfig.from_dict(cfg).tasks["toy-car"]
    return AblationPlan(task, cfg["ablations"]["toy-car"], 16)


def test_points_reuse_the_tasks_own_runs_and_shards():
    plan = _plan()
    sizes = plan.points("synthetic_size")
    own = sizes[sizes["x"] == 2000]["path"].tolist()
    assert own == ["results/toy-car/downstream/synthetic_filtered/seed0/scores.json",
                   "results/toy-car/downstream/synthetic_filtered/seed1/scores.json"]
    ratios = plan.points("filter_ratio")
    assert ratios[ratios["x"] == 0]["path"].str.contains("downstream/synthetic/").all()
    assert plan.shards("base", 4000)[:4] == [f"results/toy-car/shards/{i:05d}.h5" for i in range(4)]
    assert len(plan.shards("base", 4000)) == 8 and plan.shards("ann1-0", 500) == \
        ["results/ablations/toy-car/ann1-0/shards/00000.h5"]
    # all 16 annotations are the task's own set; the first selection round starts from a subset
    anns = plan.points("num_annotations")
    assert set(anns[anns["x"] == 16]["variant"]) == {"base"}
    assert plan.previous("uncertainty8-1") == "ann4-1"
    assert plan.annotation_sources("random8-1") == ["results/ablations/toy-car/ann4-1/annotations.h5",
                                                    "results/ablations/toy-car/random8-1/picked.h5"]
    assert plan.features("ann4-1") == "results/toy-car/features.h5"
    assert plan.features("random8-1") == "results/ablations/toy-car/random8-1/features.h5"
    assert plan.interpreter("interp-conv")["type"] == "conv" and plan.interpreter("base")["type"] == "mlp"


def test_the_manual_arm_is_one_fixed_set_for_every_seed():
    sel = _plan().points("selection")
    manual = sel[sel["arm"] == "manual"]
    assert manual["variant"].tolist() == ["manual4", "manual4", "manual8", "manual8"]
    assert manual["seed"].tolist() == [0, 1, 0, 1]
    random = sel[(sel["arm"] == "random") & (sel["x"] == 4)]
    assert random["variant"].tolist() == ["ann4-0", "ann4-1"]  # the other arms start from a random draw
    plan = _plan()
    assert plan.annotation_sources("manual8") == ["results/toy-car/annotations.h5"]
    assert plan.features("manual8") == "results/toy-car/features.h5"
    v = Variant.parse("manual8")
    assert (v.kind, v.keep, v.subset_draw) == ("manual", 8, None)
    assert (Variant.parse("ann4-3").keep, Variant.parse("ann4-3").subset_draw) == (4, 3)
    assert Variant.parse("random8-1").keep is None


def test_variant_names_round_trip():
    assert Variant.parse("uncertainty12-3") == Variant("selection", 12, 3, method="uncertainty")
    assert Variant.parse("interp-mlp-2").interpreter == "mlp-2"
    assert Variant.parse("down-class-balanced") == Variant("downstream", downstream="class-balanced")
    with pytest.raises(ValueError):
        Variant.parse("nonsense")


DOWNSTREAM_ARMS = {"class-balanced": {"class_balance": 0.5}, "ignore-uncertain": {"uncertain_pixels": 0.1},
                   "plus-annotations": {"setting": "synthetic_plus_annotations", "annotation_share": 0.2}}


def test_downstream_arms_train_on_the_tasks_own_set_with_their_options():
    plan = _plan({"downstream": DOWNSTREAM_ARMS})
    points = plan.points("downstream")
    assert points["arm"].drop_duplicates().tolist() == ["(task)", *DOWNSTREAM_ARMS]
    assert points[points["arm"] == "(task)"]["path"].tolist() == [
        "results/toy-car/downstream/synthetic_filtered/seed0/scores.json",
        "results/toy-car/downstream/synthetic_filtered/seed1/scores.json"]
    plus = points[points["arm"] == "plus-annotations"]["path"].iloc[0]
    assert plus == "results/ablations/toy-car/down-plus-annotations/n2000-f0.1/synthetic_plus_annotations/seed0/scores.json"
    assert (points["size"] == plan.size).all() and (points["ratio"] == plan.task.filter_ratio).all()
    for v in ("down-class-balanced", "down-plus-annotations"):  # the task's labelled set, nothing of their own
        assert plan.manifest(v, plan.size, 0.1) == "results/toy-car/manifest.parquet"
        assert plan.shards(v, plan.size) == plan.shards("base", plan.size)
        assert plan.annotations(v) == "results/toy-car/annotations.h5"
    assert plan.manifest("ann4-1", 2000, 0.1) == "results/ablations/toy-car/ann4-1/n2000-f0.1/manifest.parquet"
    task = plan.task.downstream.train
    balanced = plan.train_options("down-class-balanced")
    assert balanced == {**task, "class_balance": 0.5} and "setting" not in balanced
    assert plan.train_options("down-plus-annotations")["annotation_share"] == 0.2
    assert plan.setting("down-plus-annotations") == "synthetic_plus_annotations"
    assert plan.setting("down-class-balanced") == "synthetic_filtered" == plan.setting("interp-conv")
    assert plan.train_options("interp-conv") == task
    assert "downstream" in plan.enabled() and "downstream" not in _plan({"downstream": {}}).enabled()


def test_ablation_results_keep_each_class_iou(tmp_path):
    paths = []
    for arm, seed, eyes in [("a", 0, 0.1), ("a", 1, 0.3), ("b", 0, None)]:
        paths.append(tmp_path / f"{arm}{seed}.json")
        paths[-1].write_text(json.dumps({"miou": 0.5, "pixel_accuracy": 0.9, "num_train_images": 8,
                                         "iou_by_class": {"background": 0.9, "eyes": eyes}}))
    points = pd.DataFrame({"ablation": "downstream", "x": ["a", "a", "b"], "arm": ["a", "a", "b"],
                           "seed": [0, 1, 0], "path": [str(p) for p in paths]})
    runs = collect(points)
    assert runs["iou/eyes"].tolist()[:2] == [0.1, 0.3] and np.isnan(runs["iou/eyes"].iloc[2])
    table = summary(runs)
    assert table["iou/eyes_mean"].iloc[0] == pytest.approx(20.0) and np.isnan(table["iou/eyes_mean"].iloc[1])
    assert table["iou/background_mean"].tolist() == pytest.approx([90.0, 90.0])
    assert table["miou_mean"].tolist() == pytest.approx([50.0, 50.0]) and table["runs"].tolist() == [2, 1]

    # a diverged run (issue 24): no scores, counted apart, out of the means
    paths[1].write_text(json.dumps({"num_train_images": 8, "status": "diverged", "step": 3, "last_finite_loss": 2.0}))
    runs = collect(points)
    assert runs["status"].tolist() == ["ok", "diverged", "ok"] and np.isnan(runs["miou"].iloc[1])
    assert runs["device"].tolist() == ["unrecorded"] * 3  # scores written without a device record
    table = summary(runs)
    assert table["runs"].tolist() == [1, 1] and table["diverged"].tolist() == [1, 0]
    assert table["iou/eyes_mean"].iloc[0] == pytest.approx(10.0) and table["miou_mean"].iloc[0] == pytest.approx(50.0)


# -- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize("changes, message", [
    ({"filter_ratio": [0.1, 1.0]}, "ablations.toy-car.filter_ratio.1: 1.0 is greater than or equal to the maximum"),
    ({"num_annotations": [4, 40]}, "ablations.toy-car.num_annotations: 40 exceeds the task's 16 annotations"),
    ({"synthetic_size": [750]}, "synthetic set size 750 is not a multiple of samples_per_shard 500"),
    ({"selection": {"initial": 4, "step": 600, "rounds": 2}}, "exceed the pool of 1000"),
    ({"interpreter": {"big": {"num_members": 0}}}, "ablations.toy-car.interpreter.big: 0 is less than the minimum"),
    ({"interpreter": {"c": {"type": "conv", "patience": 3}}}, "ablations.toy-car.interpreter.c: Additional"),
    ({"seeds": 0}, "ablations.toy-car.seeds: 0 is less than the minimum of 1"),
    ({"selection": {"initial": 8, "step": 5, "rounds": 2}}, "the manual arm's 18 annotations exceed the task's 16"),
    ({"selection": {"initial": 4, "step": 4, "rounds": 1, "methods": ["greedy"]}},
     "ablations.toy-car.selection.methods.0: 'greedy' is not one of"),
    ({"downstream": {"more": {"seeds": 5}}},
     "ablations.toy-car.downstream.more.seeds: not a downstream training option (allowed: setting, annotation_share, "),
    ({"downstream": {"cb": {"class_balance": 2}}}, "ablations.toy-car.downstream.cb.class_balance: 2 is greater than"),
    ({"downstream": {"fs": {"setting": "few_shot"}}}, "ablations.toy-car.downstream.fs.setting: 'few_shot' is not one"),
    ({"downstream": {"soft": {"setting": "synthetic_soft"}}},
     "ablations.toy-car.downstream.soft.setting: synthetic_soft trains on the shards' class probabilities"),
])
def test_bad_ablation_values_are_config_errors(changes, message):
    cfg = _toy_config()
    cfg["ablations"]["toy-car"].update(changes)
    with pytest.raises(ConfigError, match=None) as err:
        validate_config(cfg, check_files=False)
    assert message in str(err.value)


def test_ablations_of_an_unknown_or_conditional_task_are_refused():
    cfg = _toy_config()
    cfg["ablations"] = {"nope": {}, "toy-objects": {}}
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, check_files=False)
    assert "ablations.nope: 'nope' is not a key of `tasks`" in str(err.value)
    assert "ablations.toy-objects: ablations need an unconditional task" in str(err.value)


def test_interpreter_variants_are_filled_in_as_whole_interpreters():
    cfg = validate_config(_toy_config(), check_files=False)
    conv = cfg["ablations"]["toy-car"]["interpreter"]["conv"]
    assert conv["type"] == "conv" and conv["lr"] == 0.001 and "patience" not in conv
    base = copy.deepcopy(_toy_config())
    base["ablations"]["toy-car"]["interpreter"] = {"m2": {"num_members": 2}}
    m2 = validate_config(base, check_files=False)["ablations"]["toy-car"]["interpreter"]["m2"]
    assert m2["num_members"] == 2 and m2["patience"] == 10  # the task's own patience, kept


# -- the workflow --------------------------------------------------------------------------
TINY_ABLATIONS = {"tiny": {"seeds": 1, "synthetic_size": [6, 12], "filter_ratio": [0.0, 0.5],
                           "num_annotations": [2], "interpreter": {"m2": {"num_members": 2}}}}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("abl")
    make_tiny_project(root, downstream=True)
    update_config(root, {"ablations": TINY_ABLATIONS})
    return root


@pytest.mark.slow
def test_ablation_dag_builds_and_stays_out_of_all(project):
    counts = job_counts(snakemake(project, "ablations", "-n", "--quiet", "rules").stdout)
    # sizes 6 and 12 share the task's two shards; the m2 and 2-annotation variants synthesise their own
    assert counts["synthesize"] == 2 and counts["ablation_synthesize"] == 4
    assert counts["ablation_train_interpreter"] == 2 and counts["train_interpreter"] == 1
    assert counts["ablation_report"] == 4 and counts["ablation_annotations"] == 1
    default = job_counts(snakemake(project, "-n", "--quiet", "rules").stdout)
    assert not any(rule.startswith("ablation") for rule in default)


@pytest.mark.slow
def test_downstream_arms_plan_only_downstream_runs_on_the_tasks_shards(project):
    arms = {"class-balanced": {"class_balance": 0.5}, "ignore-uncertain": {"uncertain_pixels": 0.1},
            "plus-annotations": {"setting": "synthetic_plus_annotations"}}
    with config_changed(project, {"ablations": {"tiny": {"downstream": arms}}}):
        out = snakemake(project, "results/ablations/tiny/report/downstream.png", "-n", "--quiet", "rules").stdout
    counts = job_counts(out)
    assert counts["ablation_train_downstream"] == 3 and counts["ablation_evaluate_downstream"] == 3
    assert counts["ablation_report"] == 1 and counts.get("synthesize", 0) <= 2  # the task's own shards
    assert not {"ablation_synthesize", "ablation_train_interpreter", "ablation_filter"} & set(counts)


@pytest.mark.slow
def test_ablations_run_and_a_changed_value_reruns_only_its_point(project):
    snakemake(project, "ablations", timeout=900)
    runs = pd.read_csv(project / "results/ablations/tiny/report/filter_ratio.csv")
    assert runs["x"].tolist() == [0.0, 0.5] and runs["num_train_images"].tolist() == [12, 6]
    assert (project / "results/ablations/tiny/report/synthetic_size.png").stat().st_size > 1000
    assert "Nothing to be done" in snakemake(project, "-n", "ablations").stdout
    with config_changed(project, {"ablations": {"tiny": {"filter_ratio": [0.0, 0.75]}}}):
        counts = job_counts(snakemake(project, "ablations", "-n", "--quiet", "rules").stdout)
        assert counts == {"ablation_filter": 1, "ablation_train_downstream": 1, "ablation_evaluate_downstream": 1,
                          "ablation_report": 1, "ablations": 1, "total": 5}
    with config_changed(project, {"ablations": {"tiny": {"interpreter": {"m2": {"num_members": 3}}}}}):
        counts = job_counts(snakemake(project, "ablations", "-n", "--quiet", "rules").stdout)
        assert counts["ablation_train_interpreter"] == 1 and counts["ablation_synthesize"] == 2
        assert "train_interpreter" not in counts and "extract_features" not in counts


@pytest.mark.slow
def test_figures_redraw_from_existing_results_without_training(project):
    snakemake(project, "ablations", timeout=900)
    rules = ["figures", "main_table", "sample_grid", "class_grid", "label_quality", "calibration", "ablation_report"]
    out = snakemake(project, "figures", "-n", "--forcerun", *rules[1:], "--allowed-rules", *rules,
                    "--quiet", "rules").stdout
    counts = job_counts(out)
    assert counts["ablation_report"] == 4 and counts["sample_grid"] == 1
    assert not {"train_interpreter", "synthesize", "train_downstream", "ablation_train_downstream"} & set(counts)


@pytest.mark.slow
def test_an_interpreter_arm_that_diverges_is_a_row_not_a_failure(project):
    """An interpreter arm whose every member blows up (an absurd learning rate) synthesises shards that
    record it, its downstream runs are recorded as diverged, and the report shows the arm as diverged
    beside the arm that trained."""
    arms = {"m2": {"num_members": 2}, "blowup": {"num_members": 2, "lr": 1e30}}
    with config_changed(project, {"ablations": {"tiny": {"interpreter": arms}}}):
        snakemake(project, "results/ablations/tiny/report/interpreter.png", timeout=900)
    summary = pd.read_csv(project / "results/ablations/tiny/report/interpreter_summary.csv")
    rows = summary.set_index("x")
    assert rows.loc["blowup", "diverged"] == 1 and rows.loc["blowup", "runs"] == 0
    assert rows.loc["m2", "diverged"] == 0 and rows.loc["m2", "miou_mean"] > 0
    run = json.loads(next((project / "results/ablations/tiny").glob("interp-blowup/**/scores.json")).read_text())
    assert run["status"] == "diverged" and run["what"] == "interpreter" and run["upstream"]["status"] == "diverged"
