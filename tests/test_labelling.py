"""`labelfactory label`: a trained interpreter labels the seeds a user chooses, through the
synthesis path, with per-pixel uncertainty and PNGs an annotation folder can take back."""

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from labelfactory.cli import main
from labelfactory.features import FeatureStore, extract_features
from labelfactory.generators.base import images_to_uint8
from labelfactory.generators.loading import write_canonical
from labelfactory.interpreters import TrainingData, load_interpreter
from labelfactory.interpreters.mlp import MLPEnsembleConfig, train_mlp_ensemble
from labelfactory.synthesis.shards import ShardSettings, synthesize_shard

from helpers import tiny_generator, tiny_mask


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("label")
    torch.set_num_threads(1)
    backend = tiny_generator()
    write_canonical(root / "g.safetensors", backend, {"source_url": "test"})
    z = backend.draw_latents(range(4))
    extract_features(backend, [f"s{i:08d}" for i in range(4)], z, root / "features.h5")
    images = images_to_uint8(torch.from_numpy(backend.render(z)))
    masks = np.stack([tiny_mask(img) for img in images]).astype(np.uint8)
    data = TrainingData(FeatureStore.open(root / "features.h5"), masks, 3, label_names=["bg", "a", "b"])
    ens = train_mlp_ensemble(data, MLPEnsembleConfig(num_members=2, eval_every=20, patience=2, max_epochs=3))
    ens.save(root / "interpreter.safetensors")
    return root, backend


def test_label_writes_the_shard_synthesis_would_and_pngs(trained, tmp_path):
    root, backend = trained
    out, pngs = tmp_path / "labels.h5", tmp_path / "png"
    assert main(["label", "--checkpoint", str(root / "g.safetensors"), "--interpreter",
                 str(root / "interpreter.safetensors"), "--seeds", "7,9", "--out", str(out),
                 "--png-dir", str(pngs), "--device", "cpu"]) == 0
    interpreter = load_interpreter("mlp", root / "interpreter.safetensors")
    synthesize_shard(backend, interpreter, tmp_path / "synth.h5", [7, 9], None,
                     ShardSettings(batch_size=16, store_uncertainty=True), progress=False)
    with h5py.File(out) as a, h5py.File(tmp_path / "synth.h5") as b:
        for key in ("images", "labels", "uncertainty", "score", "seed"):
            np.testing.assert_array_equal(a[key][()], b[key][()])
        labels, js = a["labels"][()], a["uncertainty"][()]
    assert sorted(p.name for p in pngs.iterdir()) == [
        "s00000007.image.png", "s00000007.png", "s00000007.uncertainty.png",
        "s00000009.image.png", "s00000009.png", "s00000009.uncertainty.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(pngs / "s00000009.png")), labels[1])
    map_ = np.asarray(Image.open(pngs / "s00000007.uncertainty.png")).astype(np.float32)
    np.testing.assert_allclose(map_, np.clip(js[0].astype(np.float32) * 255 / np.log(2), 0, 255), atol=1)


def test_label_reads_the_interpreter_type_from_its_sidecar_and_names_a_bad_one(trained, tmp_path):
    root, _ = trained
    assert load_interpreter(None, root / "interpreter.safetensors").name == "mlp"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((root / "interpreter.safetensors").read_bytes())
    (tmp_path / "bad.json").write_text('{"interpreter": "svm"}')
    with pytest.raises(ValueError, match=r"bad.json: names no known interpreter type \('svm'"):
        load_interpreter(None, bad)


def test_label_quality_against_the_users_truth_masks(trained, tmp_path):
    """Labels exported by `label`, corrected by a user, score the synthetic set's labels."""
    from labelfactory.experiments.reporting import error_summary, truth_label_errors, write_label_quality
    from labelfactory.synthesis.filtering import filter_manifest
    from labelfactory.synthesis.shards import read_shard_scores

    root, _ = trained
    shard, pngs = tmp_path / "shard.h5", tmp_path / "png"
    assert main(["label", "--checkpoint", str(root / "g.safetensors"), "--interpreter",
                 str(root / "interpreter.safetensors"), "--seeds", "3-6", "--out", str(shard),
                 "--png-dir", str(pngs), "--device", "cpu"]) == 0
    manifest = filter_manifest(read_shard_scores([shard]), 0.25)
    truth = tmp_path / "truth"
    truth.mkdir()
    wrong = np.asarray(Image.open(pngs / "s00000004.png")).copy()
    wrong[:2] = (wrong[:2] + 1) % 3  # the user corrects two rows of sample 4
    wrong[-1] = 255  # and leaves the last row unlabelled
    Image.fromarray(wrong).save(truth / "s00000004.png")
    (truth / "s00000005.png").write_bytes((pngs / "s00000005.png").read_bytes())
    errors = truth_label_errors(manifest, truth)
    assert errors["seed"].tolist() == [4, 5]
    assert errors["error"].tolist() == pytest.approx([2 / 15, 0.0])  # 2 of the 15 labelled rows differ
    assert error_summary(errors)["samples"] == 2
    out = [tmp_path / f"label_quality.{k}" for k in ("csv", "json", "png")]
    write_label_quality(errors, *out, "truth masks")
    summary = json.loads(out[1].read_text())
    assert summary["samples"] == 2 and summary["device"]["kind"] == "cpu"

    (truth / "s00000099.png").write_bytes((pngs / "s00000005.png").read_bytes())
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(truth / "s00000003.png")
    with pytest.raises(ValueError) as e:
        truth_label_errors(manifest, truth)
    assert "s00000099.png: no synthesised sample has this id" in str(e.value)
    assert "s00000003.png: 8x8 mask, the sample is 16x16" in str(e.value)
