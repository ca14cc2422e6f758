"""Every registry and fixed list of names in the package against the schema enums that offer it:
the names a config may choose are exactly those the code implements (issue 22)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from labelfactory.config.schema import schema_node

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "labelfactory"
TASK, DS = "$defs/task/properties", "$defs/downstream/properties"

# name in the package -> (its module, schema nodes holding its enum, enum values that name no entry);
# importing a module imports its package first, which registers the package's own implementations
LISTS = {
    "FORMATS": ("labelfactory.generators.checkpoints", ["$defs/checkpoint/properties/format"], {"auto"}),
    "INTERPRETERS": ("labelfactory.interpreters.base", [f"{TASK}/interpreter/properties/type"], set()),
    "PRECISIONS": ("labelfactory.interpreters.base", [f"{TASK}/synthesis/properties/precision"], set()),
    "SEGMENTATION_MODELS": ("labelfactory.downstream.models", [f"{DS}/model"], set()),
    "REAL_DATASETS": ("labelfactory.downstream.real", [f"{DS}/real/properties/type"], set()),
    "PRETRAINING_METHODS": ("labelfactory.downstream.pretrain", ["$defs/init/properties/method"], set()),
    # toy_scenes targets are written by the workflow, coco ones read as they are: neither is converted
    "TARGET_SPLITS": ("labelfactory.downstream.datasets.base", ["$defs/target/properties/type"],
                      {"toy_scenes", "coco"}),
    # the COCO exporter registers in the downstream layer (it needs the class-aware labels), the rest below it
    "EXPORTERS": ("labelfactory.downstream.coco_export", [f"{TASK}/export/properties/formats/items"], set()),
    "ARCH_DEPTH": ("labelfactory.downstream.pretrain", ["$defs/pretraining/properties/arch"], set()),
    "SETTINGS": ("labelfactory.downstream.experiment", [f"{DS}/settings/items"], set()),
    "KEYPOINT_SETTINGS": ("labelfactory.downstream.keypoint_experiment", ["$defs/keypoints/properties/settings/items"],
                          set()),
    "REAL_KEYPOINT_DATASETS": ("labelfactory.downstream.real_keypoints",
                               ["$defs/keypoints/properties/real/properties/type"], set()),
    "PROTOCOLS": ("labelfactory.downstream.experiment", [f"{DS}/evaluation/properties/protocol"], set()),
    "SCORE_RULES": ("labelfactory.synthesis.uncertainty", [f"{TASK}/synthesis/properties/score_rule"], set()),
    "LABEL_RULES": ("labelfactory.synthesis.shards", [f"{TASK}/synthesis/properties/label_rule"], set()),
    "SELECT_MODES": ("labelfactory.annotations.active_selection", [f"{TASK}/annotation/properties/select"], set()),
    "DIVERSITY_MODES": ("labelfactory.annotations.active_selection", [f"{TASK}/annotation/properties/diversity"],
                        set()),
    "MERGES": ("labelfactory.annotations.datasetgan_release", [f"{TASK}/annotation/properties/merge"], {None}),
    "NOISE_MODES": ("labelfactory.generators.stylegan2", [f"{TASK}/noise"], set()),
    "DISTRIBUTIONS": ("labelfactory.generators.torch_module", ["$defs/torch_module/properties/latent_distribution"],
                      set()),
    "CLASS_INPUTS": ("labelfactory.generators.torch_module", ["$defs/torch_module/properties/class_input"], set()),
    "CLASSES": ("labelfactory.toybench.world", [f"{DS}/real/properties/classes/items",
                                                "$defs/init/properties/real/properties/classes/items"], set()),
    "ALL_CLASSES": ("labelfactory.toybench.world", [f"{DS}/real/properties/class"], set()),
}
# registries that no config key chooses from
UNCONFIGURED = {
    "GENERATORS": "a checkpoint's architecture is read from the file (checkpoints.<name>.format picks the reader)",
    "DETECTION_DATASETS": "library API (register_detection); the workflow's transfer targets reach detectron2 as "
                          "COCO instances JSON (TARGET_SPLITS converts them)",
}


@pytest.mark.parametrize("name", sorted(LISTS))
def test_registry_names_are_the_schema_enum(name):
    module, pointers, extra = LISTS[name]
    importlib.import_module("labelfactory.downstream.datasets")  # the public datasets' readers register there
    names = set(getattr(importlib.import_module(module), name))
    for pointer in pointers:
        enum = schema_node(pointer)["enum"]
        assert len(enum) == len(set(enum)), f"{pointer}: repeated names"
        assert set(enum) - extra == names, f"{pointer}: schema {sorted(set(enum) - extra, key=str)}, " \
                                           f"{module}.{name} {sorted(names)}"


def test_every_registry_is_listed():
    """A new registry needs its schema enum here (or a reason why no config key chooses from it)."""
    found = {target.id for path in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call)
             and getattr(node.value.func, "id", None) == "Registry"
             for target in (node.targets if isinstance(node, ast.Assign) else [node.target])}
    assert found - set(LISTS) == set(UNCONFIGURED), "registries without a schema enum or a reason"


def test_settings_have_one_order():
    """The downstream settings in table order are the registry's registration order, which the
    reports use, with the interpreter's own row (score_interpreter) after few-shot; the schema's
    enum lists the settings in that order too."""
    from labelfactory.downstream.experiment import SETTINGS
    from labelfactory.downstream.interpreter_test import INTERPRETER_SETTING
    from labelfactory.experiments.reporting import SETTING_ORDER, SETTING_TITLES

    assert [s for s in SETTING_ORDER if s != INTERPRETER_SETTING] == list(SETTINGS.names())
    assert SETTING_ORDER[SETTING_ORDER.index("few_shot") + 1] == INTERPRETER_SETTING
    assert tuple(schema_node(f"{DS}/settings/items")["enum"]) == SETTINGS.names()
    assert set(SETTING_TITLES) == set(SETTINGS) | {INTERPRETER_SETTING}
