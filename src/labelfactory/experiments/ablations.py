"""The papers' ablations of one task, as points that share every stage they can.

Each ablation (config ``ablations.<task>``) is a set of points; a point is a
*variant* of the task's labeller (its annotations and interpreter), a synthetic
set size, a filter ratio and a downstream seed. Variants are named:

- ``base``: the task's own annotations and interpreter (its outputs are reused);
- ``ann{k}-{d}``: ``k`` of the task's annotations, random draw ``d`` (the task's features);
- ``random{k}-{d}`` / ``uncertainty{k}-{d}``: a selection loop at ``k`` annotations
  (``initial`` of the task's, then ``step`` pool samples per round, picked at
  random or by the previous round's ensemble and labelled by the simulated
  annotator);
- ``manual{k}``: the selection ablation's fixed arm, the first ``k`` of the
  task's annotations in the folder's order (the set a person curated; the same
  for every seed, so only the downstream run varies);
- ``interp-{name}``: the task's annotations and features, a named interpreter;
- ``down-{name}``: the task's own filtered synthetic set (its shards and manifest), a
  downstream run with a named arm's training options and setting.

A variant's shards are blocks of the task's synthesis seeds, so every size
reuses the shards of the smaller ones, and the point that equals the task's own
config *is* the task's own run (``results/<task>/...``). :class:`AblationPlan`
maps points to the files that hold them; :func:`collect` gathers the scores into
a tidy table and :func:`plot_ablation` draws it. :func:`calibration` sets each
filter ratio's threshold against per-image label error.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from labelfactory.annotations.annotation_set import AnnotationSet, load_annotation_set
from labelfactory.core.io import atomic_path
from labelfactory.experiments.reporting import pyplot, run_device, save_figure
from labelfactory.synthesis.filtering import filter_manifest

ABLATIONS = ("synthetic_size", "filter_ratio", "num_annotations", "selection", "interpreter", "downstream")
TITLES = {"synthetic_size": "synthetic set size", "filter_ratio": "filter ratio",
          "num_annotations": "number of annotations", "selection": "number of annotations",
          "interpreter": "interpreter", "downstream": "downstream training"}
CATEGORICAL = ("interpreter", "downstream")  # ablations whose values are named arms (bars, not lines)
SETTING = "synthetic_filtered"  # every point trains on the kept samples (ratio 0 keeps all), unless its arm says
REFERENCE = "(task)"  # the downstream ablation's arm that is the task's own synthetic_filtered run
_VARIANT = re.compile(r"^(?:(base)|ann(\d+)-(\d+)|(random|uncertainty)(\d+)-(\d+)|interp-(.+)|manual(\d+)"
                      r"|down-(.+))$")


@dataclass(frozen=True)
class Variant:
    """A parsed variant name (see the module docstring)."""

    kind: str  # base | subset | selection | interpreter | manual | downstream
    k: int | None = None
    draw: int = 0
    method: str | None = None
    interpreter: str | None = None
    downstream: str | None = None

    @classmethod
    def parse(cls, name: str) -> "Variant":
        m = _VARIANT.match(name)
        if not m:
            raise ValueError(f"not an ablation variant: {name!r}")
        if m[1]:
            return cls("base")
        if m[2]:
            return cls("subset", int(m[2]), int(m[3]))
        if m[4]:
            return cls("selection", int(m[5]), int(m[6]), method=m[4])
        if m[8]:
            return cls("manual", int(m[8]), method="manual")
        if m[9]:
            return cls("downstream", downstream=m[9])
        return cls("interpreter", interpreter=m[7])

    @property
    def keep(self) -> int | None:
        """How many of the task's annotations a subset or the manual arm keeps (else all sources)."""
        return self.k if self.kind in ("subset", "manual") else None

    @property
    def subset_draw(self) -> int | None:
        """The seed of a random subset's draw; None keeps the first ``keep`` (the manual arm)."""
        return None if self.kind == "manual" else self.draw


def ratio_str(ratio: float) -> str:
    return f"{float(ratio):g}"


class AblationPlan:
    """The points of one task's ablations and the paths of every stage of a variant.

    ``spec`` is the validated ``ablations.<task>`` dict, ``task`` the
    :class:`~labelfactory.config.TaskSpec` and ``n_annotations`` how many
    annotations the task has (a subset of all of them is the task's own set)."""

    def __init__(self, task, spec: dict, n_annotations: int):
        self.task, self.spec, self.n_annotations = task, spec, n_annotations
        self.name = task.name
        syn = task.synthesis
        self.size = syn.num_shards * syn.samples_per_shard
        self.retrain_size = spec["retrain_size"] or self.size

    # -- variants ------------------------------------------------------------------
    def subset(self, k: int, draw: int) -> str:
        return "base" if k >= self.n_annotations else f"ann{k}-{draw}"

    def selection_variant(self, method: str, k: int, draw: int) -> str:
        if method == "manual":
            return "base" if k >= self.n_annotations else f"manual{k}"
        return self.subset(k, draw) if k <= self.spec["selection"]["initial"] else f"{method}{k}-{draw}"

    def previous(self, variant: str) -> str:
        """The selection round a round's picks are made from."""
        v = Variant.parse(variant)
        return self.selection_variant(v.method, v.k - self.spec["selection"]["step"], v.draw)

    def annotation_sources(self, variant: str) -> list[str]:
        """The sets a variant's annotations combine: the task's (a subset), or the previous
        round's and this round's picks (a selection round)."""
        if Variant.parse(variant).kind in ("subset", "manual"):
            return [f"results/{self.name}/annotations.h5"]
        return [self.annotations(self.previous(variant)), self._own(variant, "picked.h5")]

    def interpreter(self, variant: str) -> dict:
        v = Variant.parse(variant)
        return self.spec["interpreter"][v.interpreter] if v.kind == "interpreter" else self.task.interpreter

    def setting(self, variant: str) -> str:
        """The downstream setting a variant's runs train in: a downstream arm's ``setting``, else filtered."""
        v = Variant.parse(variant)
        return self.spec["downstream"][v.downstream]["setting"] if v.kind == "downstream" else SETTING

    def train_options(self, variant: str) -> dict:
        """The task's downstream training options (``DownstreamSpec.train``), a downstream arm's keys
        overriding them."""
        v = Variant.parse(variant)
        arm = self.spec["downstream"][v.downstream] if v.kind == "downstream" else {}
        return {**self.task.downstream.train, **{k: val for k, val in arm.items() if k != "setting"}}

    # -- paths ---------------------------------------------------------------------
    def _own(self, variant: str, name: str) -> str:
        return f"results/ablations/{self.name}/{variant}/{name}"

    def annotations(self, variant: str) -> str:
        kind = Variant.parse(variant).kind
        return f"results/{self.name}/annotations.h5" if kind in ("base", "interpreter", "downstream") else \
            self._own(variant, "annotations.h5")

    def features(self, variant: str) -> str:
        return self._own(variant, "features.h5") if Variant.parse(variant).kind == "selection" else \
            f"results/{self.name}/features.h5"

    def interpreter_weights(self, variant: str) -> str:
        return f"results/{self.name}/interpreter.safetensors" if variant == "base" else \
            self._own(variant, "interpreter.safetensors")

    def shards(self, variant: str, size: int) -> list[str]:
        n = math.ceil(size / self.task.synthesis.samples_per_shard)
        own = Variant.parse(variant).kind in ("base", "downstream")
        where = f"results/{self.name}/shards" if own else self._own(variant, "shards")
        return [f"{where}/{i:05d}.h5" for i in range(n)]

    def manifest(self, variant: str, size: int, ratio: float) -> str:
        """The filter's manifest a point trains on: a downstream arm's is the task's own."""
        if Variant.parse(variant).kind == "downstream":
            return f"results/{self.name}/manifest.parquet"
        return self._own(variant, f"n{size}-f{ratio_str(ratio)}/manifest.parquet")

    def scores(self, variant: str, size: int, ratio: float, seed: int) -> str:
        """A point's scores.json: the task's own run where the point is the task's config."""
        if variant == "base" and size == self.size and ratio in (0, self.task.filter_ratio):
            setting = SETTING if ratio == self.task.filter_ratio else "synthetic"
            return f"results/{self.name}/downstream/{setting}/seed{seed}/scores.json"
        return self._own(variant, f"n{size}-f{ratio_str(ratio)}/{self.setting(variant)}/seed{seed}/scores.json")

    # -- points --------------------------------------------------------------------
    def points(self, ablation: str) -> pd.DataFrame:
        """One row per run of ``ablation``: ``ablation, x, arm, variant, size, ratio, seed, path``."""
        s, seeds, r = self.spec, range(self.spec["seeds"]), self.task.filter_ratio
        rows = []
        if ablation == "synthetic_size":
            rows = [(n, "synthetic", "base", n, r, d) for n in s["synthetic_size"] for d in seeds]
        elif ablation == "filter_ratio":
            rows = [(f, "synthetic", "base", self.size, f, d) for f in s["filter_ratio"] for d in seeds]
        elif ablation == "num_annotations":
            rows = [(k, "random", self.subset(k, d), self.retrain_size, r, d) for k in s["num_annotations"]
                    for d in seeds]
        elif ablation == "selection" and s["selection"]:
            sel = s["selection"]
            ks = [sel["initial"] + i * sel["step"] for i in range(sel["rounds"] + 1)]
            rows = [(k, m, self.selection_variant(m, k, d), self.retrain_size, r, d) for m in sel["methods"]
                    for k in ks for d in seeds]
        elif ablation == "interpreter" and s["interpreter"]:
            label = f"{self.task.interpreter['type']}-{self.task.interpreter.get('num_members', '')} (task)"
            rows = [(name, name, f"interp-{name}", self.retrain_size, r, d) for name in s["interpreter"]
                    for d in seeds] + [(label, label, "base", self.retrain_size, r, d) for d in seeds]
        elif ablation == "downstream" and s["downstream"]:
            rows = [(REFERENCE, REFERENCE, "base", self.size, r, d) for d in seeds] + \
                [(name, name, f"down-{name}", self.size, r, d) for name in s["downstream"] for d in seeds]
        df = pd.DataFrame(rows, columns=["x", "arm", "variant", "size", "ratio", "seed"])
        df.insert(0, "ablation", ablation)
        df["path"] = [self.scores(v, n, f, d) for v, n, f, d in zip(df["variant"], df["size"], df["ratio"],
                                                                      df["seed"])]
        return df

    def enabled(self) -> list[str]:
        return [a for a in ABLATIONS if len(self.points(a))]

    def variants(self) -> set[str]:
        return {v for a in ABLATIONS for v in self.points(a)["variant"]}


def count_annotations(folder: str | os.PathLike, fallback: int) -> int:
    """Rows of an annotation folder's manifest.csv (``fallback`` when it has none yet)."""
    manifest = Path(folder) / "manifest.csv"
    return len(pd.read_csv(manifest)) if manifest.is_file() else fallback


# -- annotation sets of variants -----------------------------------------------------
def combine_annotation_sets(sets: Sequence[AnnotationSet], keep: int | None = None,
                            draw: int | None = 0) -> AnnotationSet:
    """Concatenate annotation sets of one generator and label set; with ``keep``, a random
    subset of that many (seeded by ``draw``, in their original order), or with ``draw=None``
    the first ``keep``."""
    first = sets[0]
    for other in sets[1:]:
        same = (other.labels, other.generator_hash, other.truncation, other.noise) == \
            (first.labels, first.generator_hash, first.truncation, first.noise)
        if not same:
            raise ValueError("annotation sets differ in labels, generator, truncation or noise; cannot combine")
    ids = [i for s in sets for i in s.ids]
    if len(set(ids)) != len(ids):
        raise ValueError(f"annotation sets share samples: {sorted({i for i in ids if ids.count(i) > 1})[:5]}")
    n = len(ids)
    if keep is None or keep >= n:
        idx = np.arange(n)
    else:
        idx = np.arange(keep) if draw is None else np.sort(np.random.default_rng(draw).choice(n, keep, False))
    cat = {f: np.concatenate([getattr(s, f) for s in sets])[idx]
           for f in ("seeds", "classes", "latents", "images", "masks")}
    return AnnotationSet(ids=[ids[i] for i in idx], labels=first.labels, generator_hash=first.generator_hash,
                         truncation=first.truncation, noise=first.noise, **cat)


def write_combined(paths: Sequence[str | os.PathLike], out: str | os.PathLike, keep: int | None = None,
                   draw: int | None = 0) -> AnnotationSet:
    ann = combine_annotation_sets([load_annotation_set(p) for p in paths], keep, draw)
    ann.save(out)
    return ann


# -- results -------------------------------------------------------------------------
def collect(points: pd.DataFrame) -> pd.DataFrame:
    """The points with each run's ``miou``, ``pixel_accuracy``, ``num_train_images``, ``status``, ``device`` and
    the IoU of each class, ``iou/<class>`` (NaN where the test images lack the class, and every score
    NaN where the run diverged), tidy: one row per run."""
    scores = [json.loads(Path(p).read_text()) for p in points["path"]]
    out = points.reset_index(drop=True).copy()
    for key in ("miou", "pixel_accuracy", "num_train_images"):
        out[key] = [s.get(key, np.nan) for s in scores]
    out["status"] = [s.get("status", "ok") for s in scores]
    out["device"] = [run_device(s) for s in scores]
    per_class = pd.DataFrame([s.get("iou_by_class", {}) for s in scores], index=out.index, dtype=float)
    return pd.concat([out, per_class.add_prefix("iou/")], axis=1)


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """mIoU (IoU points) mean, sd and run count per ``arm`` and ``x``, in the points' order, and each
    class's mean IoU, ``iou/<class>_mean``; diverged runs are counted in ``diverged``, not in the rest."""
    classes = [c for c in runs.columns if c.startswith("iou/")]
    df = runs.assign(**{c: 100 * runs[c] for c in ["miou", *classes]}, diverged=runs["status"].eq("diverged"))
    g = df.groupby(["arm", "x"], sort=False)
    table = g["miou"].agg(miou_mean="mean", miou_sd="std", runs="count").assign(diverged=g["diverged"].sum())
    per_class = g[classes].mean().add_suffix("_mean")
    return pd.concat([table, per_class], axis=1).reset_index()


def write_ablation(runs: pd.DataFrame, csv_path: str | os.PathLike, summary_path: str | os.PathLike,
                   png_path: str | os.PathLike) -> pd.DataFrame:
    """Tidy runs and their summary as CSV, and the figure."""
    with atomic_path(csv_path) as tmp:
        runs.to_csv(tmp, index=False, float_format="%.5f")
    table = summary(runs)
    with atomic_path(summary_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.3f")
    plot_ablation(runs, png_path)
    return table


def plot_ablation(runs: pd.DataFrame, path: str | os.PathLike) -> None:
    """mIoU against the ablated value (one line per arm, error bars = sd over seeds; log x
    for set sizes), or bars for categorical values (interpreters, downstream arms)."""
    import seaborn as sns

    plt = pyplot()
    ablation = runs["ablation"].iloc[0]
    df = runs.assign(miou=100 * runs["miou"])
    fig, ax = plt.subplots(figsize=(5, 3.6))
    if ablation in CATEGORICAL:
        sns.barplot(df, x="x", y="miou", errorbar="sd", ax=ax, color=sns.color_palette("colorblind")[0])
        ax.set_xlabel(TITLES[ablation])
        ax.tick_params(axis="x", labelrotation=20)
    else:
        sns.lineplot(df, x="x", y="miou", hue="arm", style="arm", markers=True, dashes=False, errorbar="sd",
                     err_style="bars", ax=ax, palette="colorblind")
        if ablation == "synthetic_size":
            ax.set_xscale("log")
            ax.set_xticks(sorted(df["x"].unique()), [str(v) for v in sorted(df["x"].unique())])
        ax.set_xlabel(TITLES[ablation])
        if df["arm"].nunique() < 2:
            ax.get_legend().remove()
    ax.set_ylabel("mIoU on real test images (%)")
    ax.set_title(f"{TITLES[ablation]} (mean ± sd over {df['seed'].nunique()} seeds)", fontsize=9)
    save_figure(fig, path)


def calibration(manifest: pd.DataFrame, errors: pd.DataFrame, ratios: Sequence[float]) -> pd.DataFrame:
    """Per filter ratio: the score threshold over the whole manifest (the lowest dropped
    score), and the scored samples' mean label error kept vs dropped at it."""
    rows = []
    for ratio in sorted(set(ratios)):
        kept = filter_manifest(manifest, ratio)
        dropped = kept.loc[~kept["kept"], "score"]
        threshold = float(dropped.min()) if len(dropped) else float("inf")
        below = errors["score"].to_numpy(np.float32) < np.float32(threshold)  # manifest scores are float32
        rows.append({"ratio": ratio, "threshold": threshold, "dropped": int((~kept["kept"]).sum()),
                     "scored_kept": int(below.sum()), "scored_dropped": int((~below).sum()),
                     "mean_error_kept": float(errors.loc[below, "error"].mean()),
                     "mean_error_dropped": float(errors.loc[~below, "error"].mean()) if (~below).any() else np.nan})
    return pd.DataFrame(rows)


def write_calibration(manifest: pd.DataFrame, errors: pd.DataFrame, ratios: Sequence[float],
                      csv_path: str | os.PathLike, png_path: str | os.PathLike) -> pd.DataFrame:
    """The calibration table as CSV and its figure."""
    table = calibration(manifest, errors, ratios)
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.5f")
    plot_calibration(errors, table, png_path)
    return table


def plot_calibration(errors: pd.DataFrame, table: pd.DataFrame, path: str | os.PathLike) -> None:
    """One panel per filter ratio: per-image score against label error, the ratio's
    threshold, kept and dropped samples coloured."""
    import seaborn as sns

    plt = pyplot()
    fig, axes = plt.subplots(1, len(table), figsize=(3.4 * len(table), 3.4), sharey=True, squeeze=False)
    for ax, row in zip(axes[0], table.itertuples()):
        df = errors.assign(error=100 * errors["error"],
                           filter=np.where(errors["score"].to_numpy(np.float32) < np.float32(row.threshold),
                                           "kept", "dropped"))
        sns.scatterplot(df, x="score", y="error", hue="filter", hue_order=["kept", "dropped"], s=8, alpha=0.6,
                        ax=ax, legend=ax is axes[0][0])
        if math.isfinite(row.threshold):
            ax.axvline(row.threshold, color="k", lw=1, ls="--")
        ax.set_title(f"ratio {ratio_str(row.ratio)}: error kept {100 * row.mean_error_kept:.1f}% / dropped "
                     f"{100 * row.mean_error_dropped:.1f}%", fontsize=8)
        ax.set_xlabel("uncertainty score (nats)")
    axes[0][0].set_ylabel("label error vs simulated annotator (% pixels)")
    save_figure(fig, path)
