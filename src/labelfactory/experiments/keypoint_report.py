"""The keypoint experiment's reports: the table of detector runs per setting, and what the
uncertainty filter does to the synthetic keypoints (their error against an annotator)."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from labelfactory.core.io import atomic_path, atomic_write_json
from labelfactory.core.keypoint_metrics import object_scale
from labelfactory.downstream.keypoint_detector import load_keypoint_detector, predict_keypoints
from labelfactory.downstream.keypoint_experiment import KEYPOINT_SETTINGS
from labelfactory.experiments.reporting import (error_summary, mean_sd, pyplot, run_device, sample_groups, save_figure,
                                                setting_title, write_table)
from labelfactory.synthesis.filtering import read_manifest
from labelfactory.synthesis.keypoint_shards import keypoint_names_of, read_keypoint_samples

METRICS = {"pck@0.05": "PCK@0.05", "pck@0.1": "PCK@0.1", "ap": "AP (OKS)"}


def collect_keypoint_scores(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per detector run: setting, seed, training images, the :data:`METRICS`, per-keypoint
    PCK@0.1 (``pck/<name>``, in the keypoints' order) and device."""
    rows = []
    for p in paths:
        s = json.loads(Path(p).read_text())
        rows.append({"setting": s["setting"], "seed": s["seed"], "num_train_images": s["num_train_images"],
                     **{m: s[m] for m in METRICS}, **{f"pck/{k}": s["per_keypoint"][k] for k in s["keypoint_names"]},
                     "device": run_device(s)})
    df = pd.DataFrame(rows)
    order = [s for s in KEYPOINT_SETTINGS.names() if s in set(df["setting"])]
    df["setting"] = pd.Categorical(df["setting"], categories=order, ordered=True)
    return df.sort_values(["setting", "seed"]).reset_index(drop=True)


def keypoint_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting: runs, training images, each metric's mean and sd over seeds (in points, 0-100),
    and the mean PCK@0.1 of every keypoint."""
    g = runs.groupby("setting", observed=True)
    table = pd.DataFrame({"runs": g.size(), "train_images": g["num_train_images"].first()})
    for m in METRICS:
        table[f"{m}_mean"], table[f"{m}_sd"] = 100 * g[m].mean(), 100 * g[m].std(ddof=1)
    for c in (c for c in runs.columns if c.startswith("pck/")):
        table[c] = 100 * g[c].mean()
    table.index = table.index.astype(str)
    return table


def keypoint_markdown(table: pd.DataFrame, real: dict | None = None) -> str:
    """The keypoint table as Markdown: every metric as ``mean ± sd``, then PCK@0.1 per keypoint."""
    out = pd.DataFrame(index=[setting_title(s, real) for s in table.index])
    out.index.name = "setting"
    out["runs"] = table["runs"].to_numpy()
    out["train images"] = table["train_images"].to_numpy()
    for m, title in METRICS.items():
        out[title] = mean_sd(table[f"{m}_mean"], table[f"{m}_sd"])
    for c in (c for c in table.columns if c.startswith("pck/")):
        out[c.removeprefix("pck/")] = [f"{v:.1f}" for v in table[c]]
    return out.to_markdown(disable_numparse=True, colalign=["left"] + ["right"] * len(out.columns)) + "\n"


def write_keypoint_table(runs: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike,
                         runs_path: str | os.PathLike, real: dict | None = None) -> pd.DataFrame:
    """The table as CSV and Markdown (with its devices) and every run's scores as CSV."""
    return write_table(keypoint_table(runs), lambda t: keypoint_markdown(t, real), runs, csv_path, md_path,
                       runs_path, "%.5f")


def keypoint_label_errors(manifest: str | os.PathLike, annotator: str | os.PathLike, device: str = "cpu"
                          ) -> pd.DataFrame:
    """Every sample of the manifest with its synthetic keypoints' ``error`` against an annotator's (a
    keypoint detector file that plays the human): the mean distance over keypoints in units of the
    object's size (the box side of the annotator's keypoints), and ``pck``, the share within 0.1."""
    model, _ = load_keypoint_detector(annotator, device)
    rows = read_manifest(manifest)
    found = defaultdict(list)
    for shard, group in rows.groupby("shard", sort=True):
        images, keypoints, _ = read_keypoint_samples(shard, group["index"].to_numpy())
        truth = predict_keypoints(model, images, device=device)
        truth[..., 2] = 2.0
        dist = np.linalg.norm(keypoints[..., :2] - truth[..., :2], axis=-1) / np.maximum(object_scale(truth), 1.0)[:, None]
        found["shard"] += [shard] * len(group)
        found["index"] += group["index"].tolist()
        found["error"] += dist.mean(1).tolist()
        found["pck"] += (dist <= 0.1).mean(1).tolist()
    return rows.merge(pd.DataFrame(found), on=["shard", "index"])


def write_keypoint_label_quality(errors: pd.DataFrame, csv_path: str | os.PathLike, json_path: str | os.PathLike
                                 ) -> dict:
    """Per-sample errors (CSV) and their summary (JSON): :func:`~labelfactory.experiments.reporting.error_summary`
    (mean error of all, kept and dropped samples; Spearman of score and error) with PCK@0.1 of each."""
    summary = {**error_summary(errors), "pck": float(errors["pck"].mean()),
               "pck_kept": float(errors.loc[errors["kept"], "pck"].mean()),
               "pck_dropped": float(errors.loc[~errors["kept"], "pck"].mean())}
    with atomic_path(csv_path) as tmp:
        errors.to_csv(tmp, index=False, float_format="%.5f")
    atomic_write_json(json_path, summary)
    return summary


def plot_keypoint_grid(manifest: pd.DataFrame, path: str | os.PathLike, skeleton: Sequence[tuple[str, str]] = (),
                       per_row: int = 8) -> None:
    """Generated images with the head's keypoints (one colour per keypoint, the ``skeleton``'s edges
    between them): the most certain samples, random kept ones and the most uncertain dropped ones,
    each titled with its score (the members' mean spread in pixels)."""
    plt = pyplot()
    groups = sample_groups(manifest, per_row)
    names = keypoint_names_of(manifest["shard"].iloc[0])
    index = {n: i for i, n in enumerate(names)}
    colours = plt.get_cmap("tab10")(np.arange(len(names)) % 10)
    fig = plt.figure(figsize=(1.3 * per_row, 1.6 * len(groups) + 0.4), layout="constrained")
    for sub, (name, rows) in zip(fig.subfigures(len(groups), 1, squeeze=False).ravel(), groups):
        sub.suptitle(name, x=0.01, ha="left", fontsize=9, weight="bold")
        for ax, (_, row) in zip(sub.subplots(1, per_row, squeeze=False).ravel(), rows.iterrows()):
            image, kp, _ = read_keypoint_samples(row["shard"], [row["index"]])
            ax.imshow(image[0], interpolation="nearest")
            for a, b in skeleton:
                ax.plot(kp[0, [index[a], index[b]], 0], kp[0, [index[a], index[b]], 1], color="white", lw=0.6)
            ax.scatter(kp[0, :, 0], kp[0, :, 1], c=colours, s=9, edgecolors="black", linewidths=0.3)
            ax.set_title(f"{row['score']:.2f}", fontsize=7)
        for ax in sub.axes:
            ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=n) for n, c in zip(names, colours)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(names), 6), fontsize=7, frameon=False)
    save_figure(fig, path)
