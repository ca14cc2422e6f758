"""Tables and figures from the workflow's outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from labelfactory.experiments.reporting import (collect_scores, error_summary, label_class_iou, label_errors, main_table,
                                                markdown_table, plot_per_class_iou, plot_sample_grid, scored_samples,
                                                write_main_table)
from labelfactory.synthesis.shards import ShardSettings, synthesize_shard

from helpers import tiny_generator


def write_scores(root, setting, seed, miou, ious, n):
    path = root / f"{setting}-{seed}.json"
    path.write_text(json.dumps({"setting": setting, "seed": seed, "num_train_images": n, "miou": miou,
                                "pixel_accuracy": 0.9, "iou_by_class": dict(zip(("bg", "x"), ious))}))
    return path


@pytest.fixture
def runs(tmp_path):
    paths = [write_scores(tmp_path, "fully_supervised", s, m, (m, m), 1000) for s, m in enumerate((0.8, 0.9))]
    paths += [write_scores(tmp_path, "few_shot", s, m, (0.9, m), 16) for s, m in enumerate((0.4, 0.5, 0.6))]
    paths += [write_scores(tmp_path, "synthetic", 0, 0.75, (0.9, 0.6), 2000)]
    return collect_scores(paths)


def test_runs_are_ordered_by_setting(runs):
    assert list(runs["setting"].astype(str)) == ["few_shot"] * 3 + ["synthetic"] + ["fully_supervised"] * 2
    assert list(runs["iou/x"])[:3] == [0.4, 0.5, 0.6]


def test_main_table_numbers(runs, tmp_path):
    table = write_main_table(runs, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "runs.csv")
    fs, few, syn = table.loc["fully_supervised"], table.loc["few_shot"], table.loc["synthetic"]
    assert few["runs"] == 3 and few["train_images"] == 16
    assert few["miou_mean"] == pytest.approx(50.0) and few["miou_sd"] == pytest.approx(10.0)
    assert (few["miou_min"], few["miou_max"]) == pytest.approx((40.0, 60.0))
    assert fs["miou_mean"] == pytest.approx(85.0)
    assert syn["pct_of_fully_supervised"] == pytest.approx(100 * 75 / 85)
    assert syn["gain_over_few_shot"] == pytest.approx(25.0) and np.isnan(syn["miou_sd"])
    assert few["iou/x"] == pytest.approx(50.0) and few["iou/bg"] == pytest.approx(90.0)
    md = (tmp_path / "t.md").read_text()
    assert "| few-shot (annotations only) " in md and "50.0 ± 10.0" in md and "+25.0" in md
    assert pd.read_csv(tmp_path / "t.csv", index_col=0).loc["synthetic", "miou_mean"] == pytest.approx(75.0)
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 6


def test_compared_variants_follow_the_task_rows_and_are_named(runs, tmp_path):
    (tmp_path / "conv").mkdir()
    conv = [write_scores(tmp_path / "conv", "synthetic", s, m, (0.9, m), 2000) for s, m in enumerate((0.7, 0.8))]
    paths = sorted(tmp_path.glob("*.json")) + conv
    both = collect_scores(paths, {str(p): "conv interpreter" for p in conv})
    assert list(dict.fromkeys(both["setting"].astype(str))) == \
        ["few_shot", "synthetic", "fully_supervised", "synthetic | conv interpreter"]
    table = main_table(both)
    assert table.loc["synthetic | conv interpreter", "miou_mean"] == pytest.approx(75.0)
    assert table.loc["synthetic | conv interpreter", "gain_over_few_shot"] == pytest.approx(25.0)
    assert "| synthetic, unfiltered (conv interpreter) " in markdown_table(table)


def test_a_diffusion_tasks_interpreter_is_a_one_run_row_beside_few_shot(runs, tmp_path):
    """score_interpreter's file (the interpreter itself on the real test images) is a row of the
    compared task's block, after its few-shot row, with one run and a spread of 0."""
    (tmp_path / "ddpm").mkdir()
    ddpm = [write_scores(tmp_path / "ddpm", "synthetic", s, m, (0.9, m), 2000) for s, m in enumerate((0.7, 0.8))]
    ddpm.append(write_scores(tmp_path / "ddpm", "interpreter", 0, 0.55, (0.9, 0.2), 16))
    both = collect_scores(sorted(tmp_path.glob("*.json")) + ddpm, {str(p): "DDPM features" for p in ddpm})
    assert list(dict.fromkeys(both["setting"].astype(str))) == \
        ["few_shot", "synthetic", "fully_supervised", "interpreter | DDPM features", "synthetic | DDPM features"]
    table = main_table(both)
    row = table.loc["interpreter | DDPM features"]
    assert row["runs"] == 1 and row["train_images"] == 16 and row["gain_over_few_shot"] == pytest.approx(5.0)
    assert "| interpreter itself (annotations only) (DDPM features) |      1 |" in markdown_table(table)
    assert "55.0 ± 0.0" in markdown_table(table)


def test_vqgan_and_combined_rows_follow_in_setting_order(runs, tmp_path):
    """BigDatasetGAN's table: the VQGAN task's rows, then the BigGAN + VQGAN ones."""
    (tmp_path / "vq").mkdir()
    vq = [write_scores(tmp_path / "vq", s, 0, m, (0.9, m), 450) for s, m in
          (("synthetic_filtered", 0.6), ("synthetic", 0.55))]
    combined = [write_scores(tmp_path, "synthetic_combined", 0, 0.7, (0.9, 0.7), 900)]
    variants = {**{str(p): "VQGAN" for p in vq}, str(combined[0]): "BigGAN + VQGAN"}
    rows = collect_scores(sorted(tmp_path.glob("*.json")) + vq, variants)
    assert list(dict.fromkeys(rows["setting"].astype(str))) == [
        "few_shot", "synthetic", "fully_supervised", "synthetic | VQGAN", "synthetic_filtered | VQGAN",
        "synthetic_combined | BigGAN + VQGAN"]
    md = markdown_table(main_table(rows))
    assert "| synthetic, filtered (VQGAN) " in md and "| synthetic, filtered, combined (BigGAN + VQGAN) " in md


def test_class_aware_runs_add_foreground_iou(tmp_path):
    paths = []
    for seed, fg in enumerate((0.6, 0.8)):
        p = tmp_path / f"s{seed}.json"
        p.write_text(json.dumps({"setting": "synthetic", "seed": seed, "num_train_images": 10, "miou": 0.5,
                                 "pixel_accuracy": 0.9, "class_aware": True, "foreground_iou": fg,
                                 "iou_by_class": {"background": 0.9, "car": 0.3}}))
        paths.append(p)
    table = main_table(collect_scores(paths))
    assert table.loc["synthetic", "fg_iou_mean"] == pytest.approx(70.0)
    assert "fg IoU" in markdown_table(table) and "70.0 ± 14.1" in markdown_table(table)


def test_markdown_without_reference_settings(runs):
    md = markdown_table(main_table(runs[runs["setting"] == "synthetic"]))
    assert "% of fully sup." not in md and "vs few-shot" not in md and "75.0 ± 0.0" in md


def test_per_class_figure_is_written(runs, tmp_path):
    plot_per_class_iou(runs, tmp_path / "iou.png")
    assert Image.open(tmp_path / "iou.png").size[0] > 300


def test_error_summary_rank_correlation():
    errors = pd.DataFrame({"score": [0.1, 0.2, 0.3, 0.4], "error": [0.01, 0.02, 0.5, 0.9],
                           "kept": [True, True, True, False]})
    s = error_summary(errors)
    assert s["spearman_score_error"] == pytest.approx(1.0)
    assert s["mean_error_dropped"] == pytest.approx(0.9) and s["mean_error_kept"] == pytest.approx(0.53 / 3)
    assert error_summary(errors.assign(error=errors["error"][::-1].to_numpy()))["spearman_score_error"] \
        == pytest.approx(-1.0)


class Half:
    """Two members: label 1 on the left half, 0 on the right; they disagree on row 0."""

    num_classes = 2

    def member_probabilities(self, features, classes=None):
        b = next(iter(features.values())).shape[0]
        p = np.zeros((2, b, 2, 16, 16), np.float32)
        p[:, :, 1, :, :8] = 1
        p[:, :, 0, :, 8:] = 1
        p[1, :, :, 0] = p[1, :, ::-1, 0]
        import torch

        return torch.from_numpy(p)


class Reference:
    """A stand-in annotator that labels the left half 1 everywhere."""

    def label(self, images, cls):
        out = np.zeros(images.shape[:3], np.uint8)
        out[:, :, :8] = 1
        return out


def test_label_errors_against_a_reference_and_sample_grid(tmp_path):
    shard = tmp_path / "00000.h5"
    synthesize_shard(tiny_generator(), Half(), shard, range(100, 110), settings=ShardSettings(batch_size=5),
                     progress=False)
    manifest = pd.DataFrame({"shard": str(shard), "index": np.arange(10), "seed": np.arange(100, 110), "class": -1,
                             "score": np.linspace(0, 1, 10), "kept": [True] * 8 + [False] * 2})
    scored = scored_samples(manifest, Reference(), "car", n=6)
    errors = label_errors(scored)
    assert len(errors) == 6 and set(errors["seed"]) <= set(range(100, 110))
    # vote of two members: ties on the disagreeing row go to the lower label id (0); the
    # reference says 1 on its left half, so 8 of 256 pixels differ in every image
    assert errors["error"].to_numpy() == pytest.approx(np.full(6, 8 / 256))
    # per-class IoU on the same samples: the labels miss 8 of the reference's 128 object
    # pixels; an average mask of annotations that mostly say "left half" is the reference
    annotated = np.zeros((3, 16, 16), np.uint8)
    annotated[:2, :, :8] = 1
    iou = label_class_iou(scored, annotated, ["background", "part"])
    assert iou["labels"]["iou_by_class"]["part"] == pytest.approx(120 / 128)
    assert iou["labels"]["iou_by_class"]["background"] == pytest.approx(128 / 136)
    assert iou["average_mask"]["miou"] == pytest.approx(1.0)
    blank = label_class_iou(scored, np.zeros((3, 16, 16), np.uint8), ["background", "part"])
    assert blank["average_mask"]["iou_by_class"] == pytest.approx({"background": 0.5, "part": 0.0})
    plot_sample_grid(manifest, tmp_path / "grid.png", per_row=4)
    assert Image.open(tmp_path / "grid.png").size[1] > 200



@pytest.mark.parametrize("kept", [[True] * 9 + [False] * 3, [True] * 12])
def test_sample_grid_titles_overlap_no_image_and_no_other_title(monkeypatch, tmp_path, kept):
    import matplotlib.figure
    import matplotlib.image
    import matplotlib.pyplot as plt

    from labelfactory.experiments import reporting

    def samples(rows):
        rng = np.random.default_rng(len(rows))
        return (rng.integers(0, 256, (len(rows), 16, 16, 3), dtype=np.uint8),
                rng.integers(0, 3, (len(rows), 16, 16), dtype=np.uint8))

    saved = []
    monkeypatch.setattr(reporting, "_manifest_samples", samples)
    monkeypatch.setattr(reporting, "save_figure", lambda fig, path: saved.append(fig))
    manifest = pd.DataFrame({"shard": "s.h5", "index": np.arange(12), "seed": np.arange(12), "class": -1,
                             "score": np.linspace(0, 1, 12), "kept": kept})
    plot_sample_grid(manifest, tmp_path / "grid.png", per_row=4)
    fig = saved[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = {im.axes for im in fig.findobj(matplotlib.image.AxesImage)}
    assert len(axes) == 2 * (4 + 4 + (0 if all(kept) else 3))  # image and overlay of every sample shown
    # every text drawn: the images' titles (scores), and texts on an image, the figure or a subfigure
    figures = fig.findobj(lambda a: isinstance(a, matplotlib.figure.FigureBase))
    texts = [t for t in [*(ax.title for ax in axes), *(t for ax in axes for t in ax.texts),
                         *(t for f in figures for t in f.texts)] if t.get_visible() and t.get_text()]
    names = {t.get_text() for t in texts if not t.get_text()[0].isdigit()}
    assert names == {"most certain", "random kept"} | (set() if all(kept) else {"most uncertain (dropped)"})
    boxes = [t.get_window_extent(renderer) for t in texts]
    images = [ax.get_window_extent(renderer) for ax in axes]

    def overlap(a, b):
        return min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5

    for i, (text, box) in enumerate(zip(texts, boxes)):
        assert not any(overlap(box, im) for im in images), f"{text.get_text()!r} is drawn over an image"
        assert not any(overlap(box, other) for other in boxes[i + 1:]), f"{text.get_text()!r} overlaps a title"
    plt.close(fig)


def test_diverged_runs_are_shown_and_left_out_of_the_means(runs, tmp_path):
    def diverged(setting, seed):
        path = tmp_path / f"{setting}-{seed}-diverged.json"
        path.write_text(json.dumps({"setting": setting, "seed": seed, "num_train_images": 16, "status": "diverged",
                                    "step": 7, "last_finite_loss": 1.5}))
        return path

    with_diverged = collect_scores([*map(str, tmp_path.glob("*.json")), diverged("few_shot", 3),
                                    diverged("synthetic_filtered", 0)])
    table = write_main_table(with_diverged, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "runs.csv")
    few, filtered = table.loc["few_shot"], table.loc["synthetic_filtered"]
    assert (few["runs"], few["diverged"], filtered["runs"], filtered["diverged"]) == (3, 1, 0, 1)
    assert few["miou_mean"] == pytest.approx(50.0) and few["miou_sd"] == pytest.approx(10.0)  # as without it
    assert table.loc["synthetic", "diverged"] == 0 and np.isnan(filtered["miou_mean"])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in (tmp_path / "t.md").read_text().splitlines() if line.startswith("| ")}
    assert rows["few-shot (annotations only)"][:3] == ["3 + 1 diverged", "16", "50.0 ± 10.0"]
    assert rows["synthetic, filtered"][:3] == ["0 + 1 diverged", "16", "diverged"]
    assert set(rows["synthetic, filtered"][3:]) == {"–"}
    assert list(pd.read_csv(tmp_path / "runs.csv")["status"]).count("diverged") == 2


def test_class_columns_follow_the_labels_and_the_real_row_names_its_data(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"setting": "fully_supervised", "seed": 0, "num_train_images": 6, "miou": 0.5,
                                "pixel_accuracy": 0.9, "class_names": ["background", "wheel", "body"],
                                "iou_by_class": {"background": 0.9, "body": 0.2, "wheel": 0.4}}))  # JSON sorts keys
    runs = collect_scores([path])
    assert [c for c in runs.columns if c.startswith("iou/")] == ["iou/background", "iou/wheel", "iou/body"]
    write_main_table(runs, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "runs.csv",
                     {"type": "folder", "path": "data/studio-faces"})
    header, _, row = (tmp_path / "t.md").read_text().splitlines()[:3]
    assert header.split("|")[-4:-1] == ["   background ", "   wheel ", "   body "]
    assert row.startswith("| fully supervised (studio-faces) ")
    titles = [markdown_table(main_table(runs), real).splitlines()[2].split("|")[1].strip()
              for real in (None, {"type": "toyworld", "path": None}, {"type": "voc", "path": "VOC2012"})]
    assert titles == ["fully supervised (real)", "fully supervised (real)", "fully supervised (voc)"]
