"""BigDatasetGAN's class-aware label space and the toy world's object masks."""

import numpy as np
import pytest
import torch

from labelfactory.toybench import world as toyworld
from labelfactory.annotations.labels import LabelSet
from labelfactory.downstream.class_aware import ClassAwareLabels, class_names_for
from labelfactory.downstream.real import DatasetError, RealDataSpec, real_dataset
from labelfactory.downstream.segmentation import scores_from_confusion


def test_binary_masks_become_the_label_of_each_sample_class():
    space = ClassAwareLabels((7, 3), ("dog", "cat"))
    masks = np.array([[[0, 1], [255, 1]], [[1, 0], [0, 0]]], dtype=np.uint8)
    out = space.apply(masks, [3, 7])
    assert out.tolist() == [[[0, 2], [255, 2]], [[1, 0], [0, 0]]]
    assert space.label_set == LabelSet(("background", "dog", "cat"), 255)
    with pytest.raises(ValueError, match="not one of the task's classes"):
        space.apply(masks, [3, 5])
    with pytest.raises(ValueError, match="hold only 0, 1 and 255"):
        space.apply(masks + 1, [3, 7])
    with pytest.raises(ValueError, match="at most 254 classes"):
        ClassAwareLabels(tuple(range(300)), tuple(f"c{i}" for i in range(300))).label_set
    assert ClassAwareLabels.from_dict(space.to_dict()) == space


def test_class_names_come_from_the_config_then_the_generator():
    assert class_names_for([2, 0], ["b", "a"], None) == ("b", "a")
    assert class_names_for([2, 0], None, ["x", "y", "z"]) == ("z", "x")
    assert class_names_for([2, 0], None, None) == ("class2", "class0")
    with pytest.raises(ValueError, match="2 classes"):
        class_names_for([2, 0], ["b"], None)


def test_toy_world_object_masks_are_class_aware_and_exact():
    spec = RealDataSpec(type="toyworld", classes=("car", "tree"), labels="objects", size=32, test_images=4)
    ds = real_dataset(spec, "test", LabelSet(("background", "car", "tree")))
    for i in range(4):
        _, label = ds[i]
        name = ("car", "tree")[i % 2]
        parts = toyworld.render(spec.test_seed_start + i, name, 32).parts
        assert torch.equal(label, torch.from_numpy(np.where(parts > 0, 1 + i % 2, 0)))
    with pytest.raises(DatasetError, match="background \\+ the toy-world classes"):
        real_dataset(spec, "test", LabelSet(("background", "tree", "car")))


def test_foreground_iou_merges_every_object_class():
    # rows: truth, cols: prediction; background 0, classes 1 and 2
    conf = torch.tensor([[50, 5, 5], [2, 20, 8], [3, 2, 30]])
    fg = scores_from_confusion(conf)["foreground_iou"]
    assert fg == pytest.approx((20 + 8 + 2 + 30) / (20 + 8 + 2 + 30 + 2 + 3 + 5 + 5))
