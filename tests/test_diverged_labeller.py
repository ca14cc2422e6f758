"""An interpreter whose every member diverged is a recorded result downstream too: its shards hold no
samples and carry its divergence record, the filter keeps the record in the manifest (parquet), and a
downstream run on that manifest is saved as diverged (``what: interpreter``) without training."""

import json

import numpy as np
import pytest

from labelfactory.annotations.annotation_set import AnnotationSet
from labelfactory.annotations.labels import LabelSet
from labelfactory.core.divergence import Diverged
from labelfactory.downstream.experiment import SettingInputs, labeller_divergence, train_downstream
from labelfactory.downstream.segmentation import SegTrainConfig, load_model
from labelfactory.synthesis.filtering import filter_manifest, read_manifest, write_manifest
from labelfactory.synthesis.shard_job import synthesize_with_interpreter
from labelfactory.synthesis.shards import (LABELLER_DIVERGED, ShardSettings, read_shard_scores, verify_shard,
                                           write_diverged_shard)

RECORD = {"status": "diverged", "step": 3, "last_finite_loss": 1.25, "what": "loss", "dropped_members": []}


def test_a_diverged_shard_has_no_samples_and_the_record(tiny_backend, tmp_path):
    info = write_diverged_shard(tiny_backend, tmp_path / "s.h5", [0, 1, 2], None, ShardSettings(), RECORD)
    assert info.num_samples == 0 and json.loads(info.attrs[LABELLER_DIVERGED]) == RECORD
    assert verify_shard(tmp_path / "s.h5", full=True).num_samples == 0
    scores = read_shard_scores([tmp_path / "s.h5"])
    assert len(scores) == 0 and scores.attrs[LABELLER_DIVERGED] == RECORD
    manifest = filter_manifest(scores, 0.1)
    write_manifest(manifest, tmp_path / "manifest.parquet")
    assert read_manifest(tmp_path / "manifest.parquet").attrs[LABELLER_DIVERGED] == RECORD


def test_the_shard_job_records_a_diverged_interpreter_or_fails(tiny_backend, tmp_path):
    sidecar = {"interpreter": "mlp", **RECORD}
    (tmp_path / "interp.json").write_text(json.dumps(sidecar))
    (tmp_path / "interp.safetensors").write_bytes(b"weights of members as they stopped")
    info = synthesize_with_interpreter(tiny_backend, tmp_path / "interp.safetensors", tmp_path / "s.h5", [0, 1],
                                       None, ShardSettings())
    assert info.num_samples == 0 and "labeller_hash" in info.attrs
    with pytest.raises(Diverged, match="the loss became non-finite at step 3"):
        synthesize_with_interpreter(tiny_backend, tmp_path / "interp.safetensors", tmp_path / "t.h5", [0, 1],
                                    None, ShardSettings(), on_divergence="fail")
    assert not (tmp_path / "t.h5").exists()


def test_a_run_on_a_diverged_labellers_manifest_is_recorded_not_trained(tiny_backend, tmp_path):
    write_diverged_shard(tiny_backend, tmp_path / "s.h5", [0, 1], None, ShardSettings(), RECORD)
    write_manifest(filter_manifest(read_shard_scores([tmp_path / "s.h5"]), 0.0), tmp_path / "m.parquet")
    n = 2
    AnnotationSet(ids=["s0", "s1"], seeds=np.arange(n), classes=np.full(n, -1, np.int32),
                  latents=np.zeros((n, 8), np.float32), images=np.zeros((n, 16, 16, 3), np.uint8),
                  masks=np.zeros((n, 16, 16), np.uint8), labels=LabelSet(("bg", "a"), 255),
                  generator_hash=tiny_backend.generator_hash, truncation=1.0, noise="const").save(tmp_path / "a.h5")
    inputs = SettingInputs(annotations=str(tmp_path / "a.h5"), manifest=str(tmp_path / "m.parquet"))
    assert labeller_divergence(inputs) == RECORD
    info = train_downstream("synthetic_filtered", inputs, SegTrainConfig(steps=2, batch_size=2),
                            tmp_path / "model.safetensors")
    assert info["status"] == "diverged" and info["what"] == "interpreter" and info["upstream"] == RECORD
    assert info["num_train_images"] == 0 and info["step"] == 3
    _, meta = load_model(tmp_path / "model.safetensors")
    assert meta["metrics"]["status"] == "diverged"
    assert np.isfinite(info["last_finite_loss"])


def test_reports_of_an_empty_diverged_manifest_say_why(tiny_backend, tmp_path):
    from labelfactory.experiments.reporting import plot_class_grid, plot_sample_grid, write_unlabelled_quality

    write_diverged_shard(tiny_backend, tmp_path / "s.h5", [0, 1], None, ShardSettings(), RECORD)
    manifest = filter_manifest(read_shard_scores([tmp_path / "s.h5"]), 0.1)
    plot_sample_grid(manifest, tmp_path / "samples.png")
    plot_class_grid(manifest, tmp_path / "classes.png", {0: "car"})
    summary = write_unlabelled_quality(manifest, tmp_path / "q.csv", tmp_path / "q.json", tmp_path / "q.png")
    assert summary["status"] == "diverged" and summary["interpreter"] == RECORD and summary["samples"] == 0
    assert json.loads((tmp_path / "q.json").read_text())["status"] == "diverged"
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("samples.png", "classes.png", "q.png"))
