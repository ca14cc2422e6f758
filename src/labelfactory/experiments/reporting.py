"""Tables and figures of a task: the main table, per-class IoU, a sample grid
with label overlays, and per-sample uncertainty against label error.

Inputs are the workflow's own outputs (``scores.json`` of every downstream
run, the filter's manifest, shards); nothing here trains a network.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from labelfactory.core.io import atomic_path, atomic_write_json, atomic_write_text
from labelfactory.core.metrics import confusion_matrix, scores_from_confusion
from labelfactory.core.provenance import describe_device, device_line
from labelfactory.core.visualize import overlay
from labelfactory.downstream.experiment import SETTINGS
from labelfactory.downstream.interpreter_test import INTERPRETER_SETTING
from labelfactory.generators.base import sample_id
from labelfactory.interpreters.validation import average_mask
from labelfactory.synthesis.shards import LABELLER_DIVERGED, read_samples

# weakest to strongest supervision, as registered; the interpreter itself (diffusion tasks'
# downstream.score_interpreter) beside few-shot, both trained on the annotations alone
SETTING_ORDER = list(SETTINGS.names())
SETTING_ORDER.insert(SETTING_ORDER.index("few_shot") + 1, INTERPRETER_SETTING)
SETTING_TITLES = {
    "few_shot": "few-shot (annotations only)",
    INTERPRETER_SETTING: "interpreter itself (annotations only)",
    "synthetic": "synthetic, unfiltered",
    "synthetic_filtered": "synthetic, filtered",
    "synthetic_combined": "synthetic, filtered, combined",
    "synthetic_plus_annotations": "synthetic, filtered, plus annotations",
    "synthetic_soft": "synthetic, filtered, soft targets",
    "fully_supervised": "fully supervised (real)",
}


def collect_scores(paths: Sequence[str | os.PathLike], variants: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per downstream run: ``setting``, ``seed``, ``num_train_images``,
    ``miou``, ``pixel_accuracy``, ``iou/<class>`` for every class, and for
    class-aware (BigDatasetGAN) runs the class-agnostic ``foreground_iou``.

    ``variants`` maps the path of a run compared in the same table (e.g. the same
    data labelled by another interpreter) to its variant's name; its setting then
    reads ``<setting> | <variant>`` and its rows follow the task's own. A run whose
    training diverged (``status: diverged``) has ``status`` ``diverged`` and no scores (NaN)."""
    variants = {str(k): v for k, v in (variants or {}).items()}
    rows = []
    for p in paths:
        s = json.loads(Path(p).read_text())
        status = s.get("status", "ok")
        fg = {"foreground_iou": s.get("foreground_iou", np.nan)} if s.get("class_aware") else {}
        setting = s["setting"] if str(p) not in variants else f"{s['setting']} | {variants[str(p)]}"
        rows.append({"setting": setting, "seed": s["seed"], "num_train_images": s["num_train_images"],
                     "miou": s.get("miou", np.nan), **fg, "pixel_accuracy": s.get("pixel_accuracy", np.nan),
                     **{f"iou/{c}": s["iou_by_class"][c] for c in class_order(s)}, "device": run_device(s),
                     "status": status})
    df = pd.DataFrame(rows)
    names = list(dict.fromkeys(variants.values()))
    order = [s for s in SETTING_ORDER] + [f"{s} | {v}" for v in names for s in SETTING_ORDER]
    order = [s for s in order if s in set(df["setting"])]
    df["setting"] = pd.Categorical(df["setting"], categories=order, ordered=True)
    return df.sort_values(["setting", "seed"]).reset_index(drop=True)


def class_order(result: dict) -> list[str]:
    """A run's classes in ``labels.yaml`` order (its ``class_names``; scores written before
    they were recorded keep their JSON's alphabetical order)."""
    return list(result.get("class_names") or result.get("iou_by_class", {}))


def run_device(result: dict) -> str:
    """The device a run's result file records, in one line (results of before devices were recorded:
    ``unrecorded``)."""
    return device_line(result["device"]) if result.get("device") else "unrecorded"


def device_note(runs: pd.DataFrame) -> str:
    """The line under a table naming the devices its runs were computed on (with their run counts
    where there are several): tables repeat bit for bit only on the same device and software."""
    counts = runs["device"].value_counts(sort=False)
    if len(counts) == 1:
        return f"Device: {counts.index[0]}.\n"
    return "Devices: " + "; ".join(f"{d} ({n} run{'s' if n > 1 else ''})" for d, n in counts.items()) + ".\n"


def real_data_name(real: dict | None) -> str:
    """What the fully supervised runs train on, for their row's title: ``real`` for the toy
    world (its renders stand in for real images), a ``folder`` dataset's folder name, else the
    dataset's type (``voc``, ``coco``, ...)."""
    if not real or real["type"] == "toyworld":
        return "real"
    return Path(real["path"]).name if real["type"] == "folder" and real.get("path") else real["type"]


def setting_title(setting: str, real: dict | None = None) -> str:
    """``synthetic_filtered | conv interpreter`` → ``synthetic, filtered (conv interpreter)``;
    the fully supervised row names its data (:func:`real_data_name` of the ``real`` config)."""
    base, _, variant = setting.partition(" | ")
    title = SETTING_TITLES.get(base, base)
    if base == "fully_supervised":
        title = f"fully supervised ({real_data_name(real)})"
    return f"{title} ({variant})" if variant else title


def main_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting: runs, training images, mIoU mean/sd/min/max (in IoU points,
    0–100), its share of the fully supervised mIoU, its gain over few-shot, the
    foreground IoU mean/sd where the runs have it, and the mean IoU of every
    class. Spread is the sample sd over seeds. Diverged runs are left out of the
    numbers (``runs`` counts the others) and counted in ``diverged``, a column only
    where some run diverged."""
    classes = [c for c in runs.columns if c.startswith("iou/")]
    g = runs.groupby("setting", observed=True)
    diverged = runs["status"].eq("diverged").groupby(runs["setting"], observed=True).sum()
    table = pd.DataFrame({
        "runs": g.size() - diverged,
        "train_images": g["num_train_images"].first(),
        "miou_mean": 100 * g["miou"].mean(),
        "miou_sd": 100 * g["miou"].std(ddof=1),
        "miou_min": 100 * g["miou"].min(),
        "miou_max": 100 * g["miou"].max(),
    })
    if "fully_supervised" in table.index:
        table["pct_of_fully_supervised"] = 100 * table["miou_mean"] / table.loc["fully_supervised", "miou_mean"]
    if "few_shot" in table.index:
        table["gain_over_few_shot"] = table["miou_mean"] - table.loc["few_shot", "miou_mean"]
    if "foreground_iou" in runs:
        table["fg_iou_mean"] = 100 * g["foreground_iou"].mean()
        table["fg_iou_sd"] = 100 * g["foreground_iou"].std(ddof=1)
    for c in classes:
        table[c] = 100 * g[c].mean()
    if diverged.any():
        table.insert(1, "diverged", diverged)
    table.index = table.index.astype(str)
    return table


def markdown_table(table: pd.DataFrame, real: dict | None = None) -> str:
    """The main table as Markdown: mIoU as ``mean ± sd`` and one IoU column per class
    (``real``: the task's ``downstream.real``, which names the fully supervised row)."""
    out = pd.DataFrame(index=[setting_title(s, real) for s in table.index])
    out.index.name = "setting"
    out["runs"] = runs_column(table)
    out["train images"] = table["train_images"].to_numpy()
    out["mIoU"] = mean_sd(table["miou_mean"], table["miou_sd"])
    if "pct_of_fully_supervised" in table:
        out["% of fully sup."] = [_number(v, ".0f", "%") for v in table["pct_of_fully_supervised"]]
    if "gain_over_few_shot" in table:
        out["vs few-shot"] = [_number(v, "+.1f") for v in table["gain_over_few_shot"]]
    if "fg_iou_mean" in table:
        out["fg IoU"] = mean_sd(table["fg_iou_mean"], table["fg_iou_sd"])
    for c in (c for c in table.columns if c.startswith("iou/")):
        out[c.removeprefix("iou/")] = [_number(v, ".1f") for v in table[c]]
    return out.to_markdown(disable_numparse=True, colalign=["left"] + ["right"] * len(out.columns)) + "\n"


def _number(v: float, spec: str, unit: str = "") -> str:
    """``v`` formatted, or ``–`` where every run of the row diverged (NaN)."""
    return "–" if pd.isna(v) else f"{v:{spec}}{unit}"


def mean_sd(mean: pd.Series, sd: pd.Series) -> list[str]:
    """``mean ± sd`` (sd 0 for one run), or ``diverged`` where every run of the row diverged."""
    return ["diverged" if pd.isna(m) else f"{m:.1f} ± {0.0 if pd.isna(s) else s:.1f}" for m, s in zip(mean, sd)]


def runs_column(table: pd.DataFrame) -> list[str]:
    """A table's run counts, ``2`` or ``1 + 1 diverged``."""
    diverged = table["diverged"] if "diverged" in table else pd.Series(0, index=table.index)
    return [f"{n}" + (f" + {d} diverged" if d else "") for n, d in zip(table["runs"], diverged)]


def write_main_table(runs: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike,
                     runs_path: str | os.PathLike, real: dict | None = None) -> pd.DataFrame:
    """Write the main table (CSV and Markdown, ``real`` as for :func:`markdown_table`) and every
    run's scores (CSV)."""
    return write_table(main_table(runs), lambda table: markdown_table(table, real), runs, csv_path, md_path,
                        runs_path, "%.5f")


def write_table(table: pd.DataFrame, markdown, runs: pd.DataFrame, csv_path, md_path, runs_path,
                 runs_format: str) -> pd.DataFrame:
    """``table`` as CSV and as ``markdown(table)``, and the runs it summarises as CSV, each atomically."""
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, float_format="%.3f")
    with atomic_path(runs_path) as tmp:
        runs.to_csv(tmp, index=False, float_format=runs_format)
    atomic_write_text(md_path, markdown(table) + "\n" + device_note(runs))
    return table


def save_figure(fig, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=150, bbox_inches="tight")
    plt.close(fig)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_class_iou(runs: pd.DataFrame, path: str | os.PathLike) -> None:
    """Bars of IoU per class and setting, error bars the sd over seeds."""
    import seaborn as sns

    plt = pyplot()
    cols = [c for c in runs.columns if c.startswith("iou/")] + ["miou"]
    long = runs.melt(id_vars=["setting", "seed"], value_vars=cols, var_name="class", value_name="IoU")
    long["class"] = long["class"].str.removeprefix("iou/").replace({"miou": "mean"})
    long["IoU"] *= 100
    long["setting"] = long["setting"].astype(str).map(setting_title)
    fig, ax = plt.subplots(figsize=(1.4 * len(cols) + 2, 4))
    sns.barplot(long, x="class", y="IoU", hue="setting", errorbar="sd", ax=ax, palette="colorblind")
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU on real test images (%)")
    ax.legend(loc="lower left", fontsize=8)
    save_figure(fig, path)


def _manifest_samples(manifest: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of manifest rows, read shard by shard, in row order."""
    images, labels = [None] * len(manifest), [None] * len(manifest)
    for shard, rows in manifest.reset_index(drop=True).groupby("shard", sort=False):
        im, lb = read_samples(shard, rows["index"].to_numpy())
        for k, i in enumerate(rows.index):
            images[i], labels[i] = im[k], lb[k]
    return np.stack(images), np.stack(labels)


def unlabelled_note(manifest: pd.DataFrame) -> str | None:
    """Why a manifest holds no sample: every member of the task's interpreter diverged in training
    (:func:`~labelfactory.synthesis.shards.write_diverged_shard`); None for a manifest of samples."""
    record = manifest.attrs.get(LABELLER_DIVERGED)
    if record is None:
        return None
    return (f"no synthetic samples: every interpreter member diverged in training (its {record.get('what')} "
            f"became non-finite at step {record.get('step')})")


def plot_note(note: str, path: str | os.PathLike) -> None:
    """A figure that says why there is nothing to draw."""
    plt = pyplot()
    fig = plt.figure(figsize=(7, 1.2))
    fig.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
    save_figure(fig, path)


def sample_groups(manifest: pd.DataFrame, per_row: int) -> list[tuple[str, pd.DataFrame]]:
    """The rows a sample grid shows, by group: the ``per_row`` most certain samples, a seeded random
    draw of the kept ones, and the most uncertain dropped ones (empty groups left out)."""
    kept, dropped = manifest[manifest["kept"]], manifest[~manifest["kept"]]
    groups = [("most certain", kept.nsmallest(per_row, "score")),
              ("random kept", kept.sample(min(per_row, len(kept)), random_state=0) if len(kept) else kept),
              ("most uncertain (dropped)", dropped.nlargest(per_row, "score"))]
    return [(name, rows) for name, rows in groups if len(rows)]


def plot_sample_grid(manifest: pd.DataFrame, path: str | os.PathLike, per_row: int = 8) -> None:
    """Generated images with their labels overlaid: the ``per_row`` most certain
    samples, a random draw of the kept ones, and the most uncertain dropped ones
    (scores in the titles). Each group is a subfigure titled with its name, so
    constrained layout keeps the titles clear of the rows around them. A diverged
    interpreter's empty manifest gets a figure saying so (:func:`unlabelled_note`)."""
    if (note := unlabelled_note(manifest)) is not None:
        return plot_note(note, path)
    plt = pyplot()
    groups = sample_groups(manifest, per_row)
    fig = plt.figure(figsize=(1.3 * per_row, 2.9 * len(groups)), layout="constrained")
    for sub, (name, rows) in zip(fig.subfigures(len(groups), 1, squeeze=False).ravel(), groups):
        sub.suptitle(name, x=0.01, ha="left", fontsize=9, weight="bold")
        axes = sub.subplots(2, per_row, squeeze=False)
        images, labels = _manifest_samples(rows)
        for j, (top, bottom) in enumerate(axes.T):
            top.axis("off")
            bottom.axis("off")
            if j < len(rows):
                top.imshow(images[j], interpolation="nearest")
                bottom.imshow(overlay(images[j], labels[j]), interpolation="nearest")
                top.set_title(f"{rows['score'].iloc[j]:.3f}", fontsize=7)
    save_figure(fig, path)


@dataclass(frozen=True)
class ScoredSamples:
    """``n`` random manifest rows (in shard order), their labels and the simulated annotator's
    labels of their images: drawn and annotated once, scored by :func:`label_errors` and
    :func:`label_class_iou`."""

    rows: pd.DataFrame
    labels: np.ndarray
    reference: np.ndarray


def scored_samples(manifest: pd.DataFrame, annotator, cls: str | dict[int, str], n: int,
                   seed: int = 0) -> ScoredSamples:
    """Draw ``n`` random samples of ``manifest`` and have the simulated ``annotator`` label them.
    ``cls`` is the toy class of a part-labelled task, or for a class-conditional (BigDatasetGAN)
    task the toy class of each generator class, whose samples are then labelled as binary object
    masks."""
    rows = manifest.sample(min(n, len(manifest)), random_state=seed).sort_values(["shard", "index"])
    images, labels = _manifest_samples(rows)
    if isinstance(cls, dict):
        reference = np.zeros_like(labels)
        for c, name in cls.items():
            sel = rows["class"].to_numpy() == c
            if sel.any():
                reference[sel] = annotator.object_masks(images[sel], name)
    else:
        reference = annotator.label(images, cls)
    return ScoredSamples(rows, labels, reference)


def label_errors(scored: ScoredSamples) -> pd.DataFrame:
    """Each scored sample's label error against the simulated annotator: ``error`` is the share
    of pixels where the two disagree. Columns: manifest columns plus ``error``."""
    out = scored.rows.reset_index(drop=True).copy()
    out["error"] = (scored.reference != scored.labels).mean(axis=(1, 2))
    return out


def label_class_iou(scored: ScoredSamples, annotated_masks: np.ndarray, class_names: Sequence[str]) -> dict:
    """Per-class IoU against the simulated annotator, on the scored samples, of the synthetic
    labels and of the free baseline the issue of poor labels measures them by: the annotations'
    *average mask* (the label annotated most often at each pixel) drawn on every image.
    ``{"labels": scores, "average_mask": scores}``, each as :func:`scores_from_confusion` gives
    them (confusion left out)."""
    k = len(class_names)
    mean_mask = np.broadcast_to(average_mask(annotated_masks, k), scored.labels.shape)
    out = {}
    for name, pred in (("labels", scored.labels), ("average_mask", mean_mask)):
        scores = scores_from_confusion(confusion_matrix(torch.from_numpy(np.ascontiguousarray(pred)),
                                                        torch.from_numpy(scored.reference), k), class_names)
        out[name] = {key: v for key, v in scores.items() if key != "confusion"}
    return out


def truth_label_errors(manifest: pd.DataFrame, truth_dir: str | os.PathLike, ignore_index: int = 255
                       ) -> pd.DataFrame:
    """Score the labels of the synthesised samples that have a truth mask in ``truth_dir``
    (``<sample id>.png``, label ids, ``ignore_index`` pixels left out): ``error`` is the share
    of the other pixels where label and truth disagree. Every mask that names no sample of the
    manifest, or does not fit its image, is reported at once. Columns: manifest columns plus ``error``."""
    truth_dir = Path(truth_dir)
    files = sorted(truth_dir.glob("*.png"))
    ids = pd.Series([sample_id(s, c) for s, c in zip(manifest["seed"], manifest["class"])], index=manifest.index)
    by_id = dict(zip(ids, manifest.index))
    problems = [f"{f.name}: no synthesised sample has this id (seed and class not in the synthetic set)"
                for f in files if f.stem not in by_id and not f.stem.endswith((".image", ".uncertainty"))]
    files = [f for f in files if f.stem in by_id]
    if not files and not problems:
        problems.append(f"no <sample id>.png truth masks in {truth_dir}")
    rows = manifest.loc[[by_id[f.stem] for f in files]].sort_values(["shard", "index"]) if files else manifest[:0]
    images, labels = _manifest_samples(rows) if len(rows) else (None, None)
    truth = {f.stem: np.asarray(Image.open(f)) for f in files}
    errors = []
    for k, (i, row) in enumerate(rows.iterrows()):
        mask = truth[ids[i]]
        if mask.shape != labels[k].shape:
            problems.append(f"{ids[i]}.png: {mask.shape[0]}x{mask.shape[1]} mask, the sample is "
                            f"{labels[k].shape[0]}x{labels[k].shape[1]}")
            continue
        valid = mask != ignore_index
        errors.append(float((mask[valid] != labels[k][valid]).mean()) if valid.any() else float("nan"))
    if problems:
        raise ValueError(f"{truth_dir}: " + "; ".join(problems))
    out = rows.reset_index(drop=True).copy()
    out["error"] = errors
    return out


def error_summary(errors: pd.DataFrame) -> dict:
    """Mean label error of all, kept and dropped samples, and the Spearman rank
    correlation between uncertainty score and error."""
    rho = errors["score"].rank().corr(errors["error"].rank()) if len(errors) > 1 else float("nan")
    return {
        "samples": len(errors),
        "mean_error": float(errors["error"].mean()),
        "mean_error_kept": float(errors.loc[errors["kept"], "error"].mean()),
        "mean_error_dropped": float(errors.loc[~errors["kept"], "error"].mean()),
        "spearman_score_error": float(rho),
    }


def plot_uncertainty_vs_error(errors: pd.DataFrame, path: str | os.PathLike,
                              reference: str = "simulated annotator") -> None:
    """Scatter of per-image uncertainty score against label error, coloured by
    whether the filter kept the sample."""
    import seaborn as sns

    plt = pyplot()
    s = error_summary(errors)
    df = errors.assign(error=100 * errors["error"], filter=np.where(errors["kept"], "kept", "dropped"))
    fig, ax = plt.subplots(figsize=(5, 4))
    sns.scatterplot(df, x="score", y="error", hue="filter", hue_order=["kept", "dropped"], s=12, alpha=0.6, ax=ax)
    ax.set_xlabel("uncertainty score (mean top-10% JS divergence, nats)")
    ax.set_ylabel(f"label error vs {reference} (% pixels)")
    ax.set_title(f"Spearman ρ = {s['spearman_score_error']:.2f}; error kept {100 * s['mean_error_kept']:.1f}% "
                 f"vs dropped {100 * s['mean_error_dropped']:.1f}%", fontsize=9)
    save_figure(fig, path)


def write_unlabelled_quality(manifest: pd.DataFrame, csv_path: str | os.PathLike, json_path: str | os.PathLike,
                             png_path: str | os.PathLike) -> dict:
    """The label-quality files of a task whose interpreter diverged (no sample to score): an empty
    CSV, a summary with ``status: diverged`` and the interpreter's record, the note as the figure."""
    with atomic_path(csv_path) as tmp:
        pd.DataFrame(columns=[*manifest.columns, "error"]).to_csv(tmp, index=False)
    summary = {"samples": 0, "status": "diverged", "interpreter": manifest.attrs[LABELLER_DIVERGED],
               "device": describe_device()}
    atomic_write_json(json_path, summary)
    plot_note(unlabelled_note(manifest), png_path)
    return summary


def write_label_quality(errors: pd.DataFrame, csv_path: str | os.PathLike, json_path: str | os.PathLike,
                        png_path: str | os.PathLike, reference: str = "simulated annotator",
                        class_iou: dict | None = None) -> dict:
    """The per-sample errors (CSV), their summary with ``class_iou`` (JSON; see
    :func:`label_class_iou`) and the device it was computed on (the CPU,
    :func:`~labelfactory.core.provenance.describe_device`), and the uncertainty-vs-error figure."""
    with atomic_path(csv_path) as tmp:
        errors.to_csv(tmp, index=False)
    summary = {**error_summary(errors), **({"class_iou": class_iou} if class_iou else {}), "device": describe_device()}
    atomic_write_json(json_path, summary)
    plot_uncertainty_vs_error(errors, png_path, reference)
    return summary


def plot_class_grid(manifest: pd.DataFrame, path: str | os.PathLike, class_names: dict[int, str],
                    per_class: int = 8, seed: int = 0) -> None:
    """A class-conditional task's synthetic data: per class, ``per_class`` random kept
    samples above their object masks (coloured by class, as the class-aware labels); or
    :func:`unlabelled_note` as a figure."""
    if (note := unlabelled_note(manifest)) is not None:
        return plot_note(note, path)
    plt = pyplot()
    kept = manifest[manifest["kept"]]
    classes = [c for c in class_names if (kept["class"] == c).any()]
    fig, axes = plt.subplots(2 * len(classes), per_class, figsize=(1.2 * per_class, 2.5 * len(classes)),
                             squeeze=False, gridspec_kw={"hspace": 0.08, "wspace": 0.05})
    for g, c in enumerate(classes):
        rows = kept[kept["class"] == c]
        rows = rows.sample(min(per_class, len(rows)), random_state=seed)
        images, labels = _manifest_samples(rows)
        label_id = list(class_names).index(c) + 1
        for j in range(per_class):
            top, bottom = axes[2 * g, j], axes[2 * g + 1, j]
            top.axis("off")
            bottom.axis("off")
            if j < len(rows):
                top.imshow(images[j], interpolation="nearest")
                mask = np.where(labels[j] == 1, label_id, 0).astype(np.uint8)
                bottom.imshow(overlay(images[j], mask, alpha=0.6), interpolation="nearest")
        axes[2 * g, 0].set_title(class_names[c], loc="left", fontsize=9, weight="bold")
    save_figure(fig, path)


# --- the transfer experiment: pretrained backbones finetuned at several data fractions ---
TRANSFER_METRICS = {"box_AP": "box AP", "box_AP50": "box AP50", "mask_AP": "mask AP", "mask_AP50": "mask AP50",
                    "miou": "mIoU"}
# a target's task -> the finetuning that runs it (the key of its results file in a run) and its metrics
TRANSFER_TASKS = {"instance": ("detection", ("box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75")),
                  "semantic": ("semantic", ("miou",))}


def collect_transfer(runs: Sequence[dict]) -> pd.DataFrame:
    """One row per finetuning run from ``{target, tasks, init, fraction, seed, detection,
    semantic}`` (the target's tasks, and the paths of detectron2's and the semantic run's
    ``results.json``, for the tasks it has): box and mask AP/AP50/AP75 (COCOEvaluator, %; 0
    where the model predicted nothing) and mIoU (%); NaN where the target has no such task or
    that finetuning diverged (``status`` ``diverged`` if any did)."""
    rows = []
    for r in runs:
        results = {task: json.loads(Path(r[TRANSFER_TASKS[task][0]]).read_text()) for task in r["tasks"]}
        ok = {task: res.get("status", "ok") == "ok" for task, res in results.items()}
        first = results.get("semantic", results.get("instance"))
        row = {"target": r["target"], "tasks": " ".join(r["tasks"]), "init": r["init"],
               "fraction": float(r["fraction"]), "seed": int(r["seed"]), "train_images": first["num_train_images"]}
        row.update({m: np.nan for _, metrics in TRANSFER_TASKS.values() for m in metrics})
        if "instance" in results:
            det = results["instance"]
            for task, prefix in (("bbox", "box"), ("segm", "mask")):
                row.update({f"{prefix}_{k}": (det[task][k] or 0.0) if ok["instance"] else np.nan
                            for k in ("AP", "AP50", "AP75")})
        if "semantic" in results:
            row["miou"] = 100 * results["semantic"]["miou"] if ok["semantic"] else np.nan
        rows.append({**row, "device": run_device(first), "status": "ok" if all(ok.values()) else "diverged"})
    df = pd.DataFrame(rows)
    for key in ("target", "init"):
        df[key] = pd.Categorical(df[key], categories=list(dict.fromkeys(r[key] for r in runs)), ordered=True)
    return df.sort_values(["target", "init", "fraction", "seed"]).reset_index(drop=True)


def transfer_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per target × initialisation × fraction: the target's tasks, runs, training images, and
    mean and sample sd over seeds of every metric of :data:`TRANSFER_METRICS` (NaN where the
    target has no such task). ``diverged`` (a column only where some run diverged) counts the
    runs whose detection or semantic finetuning diverged, ``runs`` the others; each metric's
    mean is over the runs that finished it."""
    keys = ["target", "init", "fraction"]
    g = runs.groupby(keys, observed=True)
    diverged = runs["status"].eq("diverged").groupby([runs[k] for k in keys], observed=True).sum()
    table = pd.DataFrame({"tasks": g["tasks"].first(), "runs": g.size() - diverged,
                          "train_images": g["train_images"].first()})
    if diverged.any():
        table.insert(2, "diverged", diverged)
    for m in TRANSFER_METRICS:
        table[f"{m}_mean"], table[f"{m}_sd"] = g[m].mean(), g[m].std(ddof=1)
    return table


def target_metrics(tasks: str) -> list[str]:
    """The metrics of :data:`TRANSFER_METRICS` that a target's tasks (space-separated) give."""
    given = {m for task in tasks.split() for m in TRANSFER_TASKS[task][1]}
    return [m for m in TRANSFER_METRICS if m in given]


def transfer_markdown(table: pd.DataFrame) -> str:
    """The transfer table as Markdown, a block per target (its name in bold, then init ×
    fraction rows with the metrics of its tasks), every metric as ``mean ± sd``."""
    blocks = []
    for target, block in table.groupby(level="target", observed=True, sort=False):
        block = block.droplevel("target")
        out = block[["train_images"]].reset_index()
        out.insert(2, "runs", runs_column(block))
        out["fraction"] = [f"{100 * f:g} %" for f in out["fraction"]]
        out = out.rename(columns={"train_images": "train images"})
        for m in target_metrics(block["tasks"].iloc[0]):
            out[TRANSFER_METRICS[m]] = mean_sd(block[f"{m}_mean"], block[f"{m}_sd"])
        blocks.append(f"**{target}**\n\n" + out.to_markdown(
            index=False, disable_numparse=True, colalign=["left", "right"] + ["right"] * (len(out.columns) - 2)))
    return "\n\n".join(blocks) + "\n"


def write_transfer_table(runs: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike,
                         runs_path: str | os.PathLike) -> pd.DataFrame:
    """Write the transfer table (CSV and Markdown) and every run's metrics (CSV)."""
    return write_table(transfer_table(runs), transfer_markdown, runs, csv_path, md_path, runs_path, "%.4f")


def plot_data_efficiency(runs: pd.DataFrame, path: str | os.PathLike) -> None:
    """Box AP, mask AP and mIoU against the fraction of downstream training data
    (log scale), a row per target (the panels of its tasks), a line per initialisation,
    error bars the sd over seeds."""
    import seaborn as sns

    plt = pyplot()
    panels = {"box_AP": "box AP (%)", "mask_AP": "mask AP (%)", "miou": "mIoU (%)"}
    targets = list(runs["target"].cat.categories)
    fig, axes = plt.subplots(len(targets), len(panels), figsize=(4.2 * len(panels), 3.6 * len(targets)),
                             squeeze=False, layout="constrained")
    for row, target in zip(axes, targets):
        data = runs[runs["target"] == target]
        shown = [m for m in panels if m in target_metrics(data["tasks"].iloc[0])]
        fractions = sorted(data["fraction"].unique())
        for ax, (metric, label) in zip(row, panels.items()):
            if metric not in shown:
                ax.set_axis_off()
                continue
            sns.lineplot(data, x="fraction", y=metric, hue="init", marker="o", errorbar="sd", err_style="bars",
                         ax=ax, palette="colorblind", legend=metric == shown[-1])
            ax.set_xscale("log")
            ax.set_xticks(fractions, [f"{100 * f:g} %" for f in fractions])
            ax.set_xlabel("fraction of downstream training data")
            ax.set_ylabel(label)
            ax.set_title(target, loc="left", fontsize=9, weight="bold")
            if metric == shown[-1]:
                ax.legend(title="initialisation", fontsize=8)
    save_figure(fig, path)
