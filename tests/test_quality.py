import numpy as np
import pandas as pd
import pytest
import torch

from labelfactory.toybench import world as toyworld
from labelfactory.annotations.importing import import_annotations
from labelfactory.annotations.handout import sample_for_annotation
from labelfactory.toybench.annotator import Annotator, UNet, simulate_annotation
from labelfactory.toybench.quality import kid

from helpers import tiny_biggan, tiny_generator


def test_kid_is_zero_in_distribution_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    near, _ = kid(a, b, subsets=10, subset_size=200)
    far, _ = kid(a, rng.normal(0.5, 1.0, size=(400, 16)), subsets=10, subset_size=200)
    farther, _ = kid(a, rng.normal(1.0, 1.0, size=(400, 16)), subsets=10, subset_size=200)
    assert abs(near) < 0.02 < far < farther
    with pytest.raises(ValueError, match="at least two"):
        kid(a[:1], b[:1])


def test_simulated_annotation_makes_a_valid_annotation_folder(tmp_path):
    torch.manual_seed(0)
    ann = Annotator(UNet(len(toyworld.global_part_labels()), width=8, levels=3).eval(), {"sha256": "0" * 64})
    backend = tiny_generator(size=16)
    sample_for_annotation(backend, range(3), tmp_path / "samples")
    n = simulate_annotation(tmp_path / "samples", tmp_path / "ann", ann, "car")
    assert n == 3
    manifest = pd.read_csv(tmp_path / "ann" / "manifest.csv", dtype={"id": str})
    assert list(manifest["seed"]) == [0, 1, 2]
    # the folder passes the same validation as a human's
    out = import_annotations(tmp_path / "ann", backend, tmp_path / "a.h5")
    assert out.labels.names == toyworld.part_labels("car") and len(out) == 3
    assert out.masks.max() <= len(toyworld.PARTS["car"])
    np.testing.assert_array_equal(out.masks, ann.label(out.images, "car"))


def test_simulated_annotation_of_a_class_conditional_task_gives_object_masks_per_class(tmp_path):
    torch.manual_seed(0)
    ann = Annotator(UNet(len(toyworld.global_part_labels()), width=8, levels=3).eval(), {"sha256": "0" * 64})
    backend = tiny_biggan()
    sample_for_annotation(backend, range(2), tmp_path / "samples", classes=[0, 1])
    assert simulate_annotation(tmp_path / "samples", tmp_path / "ann", ann, {0: "car", 1: "tree"}) == 4
    out = import_annotations(tmp_path / "ann", backend, tmp_path / "a.h5", classes=[0, 1], expected_per_class=2)
    assert out.labels.names == ("background", "object") and out.classes.tolist() == [0, 0, 1, 1]
    # each sample is labelled with its own class's parts, merged into one object mask
    np.testing.assert_array_equal(out.masks[:2], (ann.label(out.images[:2], "car") > 0).astype(np.uint8))
    np.testing.assert_array_equal(out.masks[2:], (ann.label(out.images[2:], "tree") > 0).astype(np.uint8))


def test_dominant_class_names_the_toy_class_the_annotator_sees():
    torch.manual_seed(0)
    net = UNet(len(toyworld.global_part_labels()), width=8, levels=3).eval()
    tree_part = 1 + sum(len(toyworld.PARTS[c]) for c in toyworld.CLASSES[:3])  # first tree part in joint space

    class Fixed(torch.nn.Module):  # predicts that tree part on the left half, background elsewhere
        def forward(self, x):
            out = torch.zeros(x.shape[0], len(toyworld.global_part_labels()), *x.shape[2:])
            out[:, 0] = 1.0
            out[:, tree_part, :, : x.shape[3] // 2] = 2.0
            return out

    ann = Annotator(net, {})
    ann.model = Fixed()
    assert ann.dominant_class(np.zeros((3, 16, 16, 3), np.uint8)).tolist() == [3, 3, 3]
