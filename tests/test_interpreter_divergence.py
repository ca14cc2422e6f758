"""Interpreter training whose loss turns non-finite (an absurd learning rate): members stop there; under
on_divergence: record the diverged members are dropped, or, if all diverged, the sidecar says so and the
interpreter is refused where it would label; under fail the first raises."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from labelfactory.core.divergence import Diverged
from labelfactory.interpreters import TrainingData, load_interpreter
from labelfactory.interpreters.base import keep_finite_members
from labelfactory.interpreters.conv import ConvInterpreterConfig, train_conv_ensemble
from labelfactory.interpreters.mlp import MLPEnsemble, MLPEnsembleConfig, train_mlp_ensemble
from test_conv_interpreter import SMALL, synthetic
from test_interpreter import NAMES, linear_labels, random_maps, write_store

torch.set_num_threads(1)

ABSURD = 1e30  # Adam steps of this size overflow float32 within a few batches


@pytest.fixture(scope="module")
def mlp_data(tmp_path_factory):
    maps = random_maps(4)
    store = write_store(tmp_path_factory.mktemp("feat") / "features.h5", maps)
    return TrainingData(store, linear_labels(maps), len(NAMES), generator_hash="gen-a", label_names=NAMES)


@pytest.fixture(scope="module")
def conv_data(tmp_path_factory):
    maps, shape = synthetic(4)
    store = write_store(tmp_path_factory.mktemp("feat") / "features.h5", maps)
    return TrainingData(store, shape, 2, generator_hash="gen-a", label_names=["bg", "obj"])


MLP = MLPEnsembleConfig(num_members=2, eval_every=10, patience=100, max_batches=60, seed=3)
CONV = ConvInterpreterConfig(iterations=30, **SMALL)
FITS = {"mlp": (train_mlp_ensemble, MLP, "mlp_data"), "conv": (train_conv_ensemble, CONV, "conv_data")}


def strict_json(path):
    """A JSON file parsed as strict JSON: ``Infinity``/``NaN`` (which other readers refuse) fail the test."""
    def refuse(constant):
        raise AssertionError(f"{path} holds the non-standard JSON constant {constant}")
    return json.loads(path.read_text(), parse_constant=refuse)


def assert_diverged_record(record):
    assert record["status"] == "diverged" and record["what"] == "loss"
    assert record["step"] >= 1 and math.isfinite(record["last_finite_loss"])  # the first batch's loss is finite


@pytest.mark.parametrize("kind", FITS)
def test_all_members_diverged_is_recorded_and_refused_where_it_would_label(kind, request, tmp_path):
    fit, cfg, data = FITS[kind]
    ens = fit(request.getfixturevalue(data), replace(cfg, lr=ABSURD))
    assert len(ens.members) == cfg.num_members  # kept as they stopped: nothing is left to label with
    assert all(h.diverged is not None for h in ens.history)
    if kind == "mlp":
        assert all(h.stop_reason == "diverged" and h.batches < cfg.max_batches for h in ens.history)
    else:
        assert all(h.iterations == h.diverged["step"] < cfg.iterations for h in ens.history)
    ens.save(tmp_path / "interpreter.safetensors")
    sidecar = strict_json(tmp_path / "interpreter.json")
    assert_diverged_record(sidecar)
    assert sidecar["step"] == ens.history[0].diverged["step"] and sidecar["device"]["kind"] == "cpu"
    with pytest.raises(ValueError, match="every member of this interpreter diverged in training") as e:
        load_interpreter(None, tmp_path / "interpreter.safetensors")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", FITS)
def test_fail_raises_at_the_first_diverged_member(kind, request):
    fit, cfg, data = FITS[kind]
    with pytest.raises(Diverged, match="interpreter member 0: the loss became non-finite at step"):
        fit(request.getfixturevalue(data), replace(cfg, lr=ABSURD), on_divergence="fail")


@pytest.mark.parametrize("kind", FITS)
def test_a_finite_ensemble_records_ok_and_its_device(kind, request, tmp_path):
    fit, cfg, data = FITS[kind]
    ens = fit(request.getfixturevalue(data), cfg, on_divergence="fail")
    ens.save(tmp_path / "interpreter.safetensors")
    sidecar = json.loads((tmp_path / "interpreter.json").read_text())
    assert sidecar["status"] == "ok" and sidecar["dropped_members"] == []
    assert sidecar["device"]["kind"] == "cpu" and sidecar["device"]["torch"] == torch.__version__
    assert load_interpreter(None, tmp_path / "interpreter.safetensors").run == ens.run


def test_diverged_members_are_dropped_while_one_remains(mlp_data, tmp_path):
    ens = train_mlp_ensemble(mlp_data, MLP)
    diverged = {"status": "diverged", "step": 7, "last_finite_loss": 1.5, "what": "loss"}
    histories = [ens.history[0], replace(ens.history[1], diverged=diverged, stop_reason="diverged")]
    members, history, run = keep_finite_members(list(ens.members), histories, "cpu")
    assert members == [ens.members[0]] and history == [ens.history[0]]
    assert run["status"] == "ok" and [h["diverged"] for h in run["dropped_members"]] == [diverged]
    one = MLPEnsemble(members, MLP, ens.layers, ens.layer_dims, ens.num_classes, ens.resolution, ens.generator_hash,
                      history, NAMES, run=run)
    one.save(tmp_path / "interpreter.safetensors")
    loaded = load_interpreter(None, tmp_path / "interpreter.safetensors")
    assert len(loaded.members) == 1 and loaded.run["dropped_members"] == run["dropped_members"]
    feats = {l: torch.zeros(1, *s) for l, s in zip(ens.layers, [mlp_data.store.shapes[l] for l in ens.layers])}
    assert np.isfinite(loaded.member_probabilities(feats).numpy()).all()
