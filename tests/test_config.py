import copy
import re
from pathlib import Path

import pytest
import yaml

from labelfactory.config import ConfigError, WorkflowConfig, load_config, validate_config

from helpers import REPO


def minimal(tmp_path: Path) -> dict:
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "labels.yaml").write_text("names: [background, thing]\n")
    return {"checkpoints": {"g": {"url": "g.pt"}}, "tasks": {"t": {"checkpoint": "g", "annotations": str(ann)}}}


def test_default_config_is_valid_and_typed():
    cfg = load_config(REPO / "config" / "config.yaml", check_files=False)
    typed = WorkflowConfig.from_dict(cfg)
    task = typed.tasks["toy-car"]
    assert task.annotation.seeds == list(range(16)) and task.noise == "const"
    assert task.labels == "config/annotations/toy-car/labels.yaml"


def test_defaults_are_filled(tmp_path):
    cfg = validate_config(minimal(tmp_path))
    t = cfg["tasks"]["t"]
    assert cfg["device"] == "auto" and cfg["checkpoints"]["g"]["format"] == "auto"
    assert t["truncation"] == 1.0 and t["noise"] == "const" and t["class"] == -1
    assert t["annotation"] == {"num_samples": 16, "seed_start": 0, "expected_count": None, "expected_per_class": None,
                               "select": "random", "pool": {"seed_start": 1000000, "size": 1000}, "diversity": "none",
                               "oversample": 4, "latents": None, "merge": None, "only_masked": False, "masks": True,
                               "source": "samples"}
    assert t["features"] == {"layers": "all", "batch_size": 8}


def test_truncation_cutoff_reaches_the_task(tmp_path):
    cfg = minimal(tmp_path)
    assert WorkflowConfig.from_dict(validate_config(cfg)).tasks["t"].truncation_cutoff is None
    cfg["checkpoints"]["g"]["format"] = "datasetgan-stylegan1"
    cfg["tasks"]["t"]["truncation_cutoff"] = 8
    assert WorkflowConfig.from_dict(validate_config(cfg)).tasks["t"].truncation_cutoff == 8


def test_defaults_are_not_shared_between_tasks(tmp_path):
    cfg = minimal(tmp_path)
    cfg["tasks"]["u"] = dict(cfg["tasks"]["t"])
    cfg = validate_config(cfg)
    cfg["tasks"]["t"]["synthesis"]["num_shards"] = 9
    assert cfg["tasks"]["u"]["synthesis"]["num_shards"] == 4


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda c: c["tasks"]["t"].update(truncation=0), "tasks.t.truncation"),
        (lambda c: c["tasks"]["t"].update(truncation=1.5), "tasks.t.truncation"),
        (lambda c: c["tasks"]["t"].update(noise="sometimes"), "tasks.t.noise"),
        (lambda c: c["tasks"]["t"].update(truncation_cutoff=0), "tasks.t.truncation_cutoff"),
        (lambda c: c["tasks"]["t"].update(truncation_cutoff=8) or c["checkpoints"]["g"].update(format="rosinality"),
         "tasks.t.truncation_cutoff"),
        (lambda c: c["tasks"]["t"].update(unknown_key=1), "tasks.t"),
        (lambda c: c["tasks"]["t"].update(annotation={"num_samples": 0}), "tasks.t.annotation.num_samples"),
        (lambda c: c["tasks"]["t"].update(features={"layers": "some"}), "tasks.t.features.layers"),
        (lambda c: c["tasks"]["t"].update(features={"layers": []}), "tasks.t.features.layers"),
        (lambda c: c["tasks"]["t"].update(synthesis={"precision": "int8"}), "tasks.t.synthesis.precision"),
        (lambda c: c["tasks"]["t"].update(downstream={"evaluation": {"protocol": "cross_validation"}}),
         "tasks.t.downstream.evaluation.protocol"),
        (lambda c: c["tasks"]["t"].update(downstream={"steps": 10, "snapshots": 20}), "tasks.t.downstream.snapshots"),
        (lambda c: c["checkpoints"]["g"].update(sha256="abc"), "checkpoints.g.sha256"),
        (lambda c: c["checkpoints"]["g"].update(format="onnx"), "checkpoints.g.format"),
        (lambda c: c.update(device="gpu"), "device"),
        (lambda c: c.update(tasks={}), "tasks"),
        (lambda c: c["tasks"].update({"bad name!": c["tasks"]["t"]}), "tasks"),
    ],
)
def test_bad_values_are_named(tmp_path, edit, where):
    cfg = minimal(tmp_path)
    edit(cfg)
    with pytest.raises(ConfigError, match=f"(?m)^  {re.escape(where)}: "):
        validate_config(cfg)


def test_every_problem_is_reported_at_once(tmp_path):
    cfg = minimal(tmp_path)
    cfg["tasks"]["t"].update(checkpoint="nope", filter={"ratio": 1.5}, downstream={"steps": "many"},
                             synthesis={"num_shards": 0})
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    lines = str(err.value).splitlines()
    assert lines[0] == "invalid configuration (4 problems):"
    assert sorted(lines[1:]) == [
        "  tasks.t.checkpoint: 'nope' is not a key of `checkpoints` (known: ['g'])",
        "  tasks.t.downstream.steps: 'many' is not of type 'integer'",
        "  tasks.t.filter.ratio: 1.5 is greater than or equal to the maximum of 1",
        "  tasks.t.synthesis.num_shards: 0 is less than the minimum of 1",
    ]


def test_problems_say_what_is_allowed(tmp_path):
    cfg = minimal(tmp_path)
    cfg["tasks"]["t"].update(features={"layers": "some"}, unknown_key=1)
    cfg["tasks"]["bad name!"] = copy.deepcopy(cfg["tasks"]["t"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    msg = str(err.value)
    assert "tasks.t.features.layers: 'some' is not valid under any of the given schemas " \
           "(allowed: one of 'all'; or array of string)" in msg
    assert re.search(r"tasks\.t: Additional properties .*'unknown_key' was unexpected.* \(allowed: checkpoint, "
                     r"annotations, .*synthesis", msg)
    assert "tasks: key 'bad name!' does not match" in msg


def test_a_rejected_value_is_not_cross_checked(tmp_path):
    cfg = minimal(tmp_path)
    cfg["tasks"]["t"]["synthesis"] = {"num_shards": "x", "seed_start": 0}  # would overlap the annotation seeds
    cfg["tasks"]["t"]["checkpoint"] = ["g"]
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value).splitlines()[1:] == ["  tasks.t.checkpoint: ['g'] is not of type 'string'",
                                               "  tasks.t.synthesis.num_shards: 'x' is not of type 'integer'"]


def test_cross_references_and_files_are_checked(tmp_path):
    cfg = minimal(tmp_path)
    bad = copy.deepcopy(cfg)
    bad["tasks"]["t"]["checkpoint"] = "nope"
    with pytest.raises(ConfigError, match="tasks.t.checkpoint: 'nope' is not a key of `checkpoints`"):
        validate_config(bad)
    bad = copy.deepcopy(cfg)
    bad["tasks"]["t"]["annotations"] = str(tmp_path / "missing")
    validate_config(bad)  # not annotated yet: fine until import_annotations runs
    bad = copy.deepcopy(cfg)
    bad["tasks"]["t"]["synthesis"] = {"seed_start": 10}
    with pytest.raises(ConfigError, match="synthesis seeds 10..2009 overlap the annotation seeds 0..15"):
        validate_config(bad)
    (tmp_path / "ann" / "labels.yaml").unlink()
    with pytest.raises(ConfigError, match="tasks.t.labels: .*labels.yaml does not exist"):
        validate_config(cfg)


def test_load_config_rejects_non_mapping(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(p)


def vqgan_pair(tmp_path: Path) -> dict:
    """A class-conditional task and a VQGAN task reusing its annotations, combined in its table."""
    cfg = minimal(tmp_path)
    cfg["checkpoints"]["vq"] = {"url": "vq.ckpt"}
    cfg["tasks"]["t"].update(classes=[0, 1], downstream={
        "labels": "class_aware", "variant": "BigGAN", "compare": ["v"], "combine": ["v"],
        "settings": ["synthetic", "synthetic_combined"]})
    cfg["tasks"]["v"] = {"checkpoint": "vq", "reuse": {"task": "t"}, "classes": [0, 1],
                         "synthesis": {"sampling": {"temperature": 0.9, "top_k": 100}},
                         "downstream": {"labels": "class_aware", "variant": "VQGAN", "enabled": False}}
    return cfg


def test_a_vqgan_task_reuses_annotations_and_joins_the_combined_setting(tmp_path):
    typed = WorkflowConfig.from_dict(validate_config(vqgan_pair(tmp_path)))
    v, t = typed.tasks["v"], typed.tasks["t"]
    assert v.annotations is None and v.reuse == {"task": "t", "min_psnr": 20.0}
    assert v.labels == t.labels == str(tmp_path / "ann" / "labels.yaml")
    assert v.synthesis.sampling == {"temperature": 0.9, "top_k": 100}
    assert (t.variant, v.variant, typed.tasks["t"].downstream.combine) == ("BigGAN", "VQGAN", ("v",))
    (tmp_path / "plain").mkdir()
    plain = WorkflowConfig.from_dict(validate_config(minimal(tmp_path / "plain")))
    assert plain.tasks["t"].variant == "mlp interpreter" and plain.tasks["t"].reuse is None


def test_reuse_and_combine_problems_are_reported_at_once(tmp_path):
    cfg = vqgan_pair(tmp_path)
    cfg["tasks"]["x"] = {"checkpoint": "vq"}  # neither annotations nor reuse
    cfg["tasks"]["y"] = {"checkpoint": "vq", "reuse": {"task": "t"}, "classes": [0]}
    cfg["tasks"]["z"] = {"checkpoint": "vq", "reuse": {"task": "nope"},
                         "downstream": {"combine": ["t"]}}
    cfg["tasks"]["v"]["synthesis"]["sampling"]["top_p"] = 1.5
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    lines = sorted(str(err.value).splitlines()[1:])
    assert lines == [
        "  tasks.v.synthesis.sampling.top_p: 1.5 is greater than the maximum of 1",
        "  tasks.x: give either `annotations` (a folder) or `reuse` (a task whose annotations a VQGAN re-encodes or a diffusion model reads), "
        "neither is set",
        "  tasks.y.classes: [0] differ from the reused task 't''s [0, 1] (its annotations keep their classes)",
        "  tasks.z.downstream.combine: the setting synthetic_combined needs the tasks to combine, and `combine` "
        "needs synthetic_combined in `settings`",
        "  tasks.z.reuse.task: 'nope' is not another key of `tasks`",
    ]
    (tmp_path / "again").mkdir()
    cfg = vqgan_pair(tmp_path / "again")
    cfg["tasks"]["v"]["annotations"] = "somewhere"  # both
    cfg["tasks"]["u"] = {"checkpoint": "vq", "reuse": {"task": "t"}, "classes": [0, 1]}
    cfg["tasks"]["w"] = {"checkpoint": "vq", "reuse": {"task": "u"}, "classes": [0, 1]}  # a reuse of a reuse
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert sorted(str(err.value).splitlines()[1:]) == [
        "  tasks.v: give either `annotations` (a folder) or `reuse` (a task whose annotations a VQGAN re-encodes or a diffusion model reads), "
        "not both",
        "  tasks.w.reuse.task: 'u' has no annotation folder of its own to reuse",
    ]


def test_combined_tasks_must_share_the_label_space(tmp_path):
    cfg = vqgan_pair(tmp_path)
    cfg["tasks"]["v"]["downstream"]["labels"] = "annotated"
    with pytest.raises(ConfigError, match=r"tasks.t.downstream.combine: 'v' has other classes or labels than 't'"):
        validate_config(cfg)


def test_a_malformed_reused_task_is_reported_by_the_schema_alone(tmp_path):
    cfg = vqgan_pair(tmp_path)
    cfg["tasks"]["t"]["classes"] = "zero-one"
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].startswith("  tasks.t.classes: 'zero-one' is not valid")


# --- one source for every default: the schema's, restated by the config dataclasses ---------------
def _plain(value):
    """Dataclasses as dicts and tuples as lists, so that a default compares with the schema's."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _dataclass_defaults(cls) -> dict:
    import dataclasses

    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _spec_classes():
    """(dataclass, schema object it mirrors, the object a config leaving it out gets, renames of fields
    to key paths in that object) for every dataclass that restates schema defaults."""
    from labelfactory.config import specs
    from labelfactory.downstream.real import RealDataSpec
    from labelfactory.downstream.pretrain import PretrainConfig
    from labelfactory.downstream.segmentation import SegTrainConfig
    from labelfactory.generators.torch_module import TorchModuleConfig
    from labelfactory.interpreters.conv import ConvInterpreterConfig
    from labelfactory.interpreters.mlp import MLPEnsembleConfig
    from labelfactory.synthesis.export import ExportOptions
    from labelfactory.synthesis.shards import ShardSettings
    from labelfactory.toybench.scenes import SceneSpec

    task, ds = "$defs/task", "$defs/downstream"
    pre = {f: f"pretrain.{f}" for f in _dataclass_defaults(PretrainConfig) if f != "arch"}
    shard = {f: f"synthesis.{f}" for f in _dataclass_defaults(ShardSettings) if f not in ("truncation", "noise")}
    return [
        (specs.CheckpointSpec, "$defs/checkpoint", {}, {}),
        (specs.TaskSpec, task, {}, {"cls": "class", "filter_ratio": "filter.ratio"}),
        (specs.AnnotationSpec, f"{task}/properties/annotation", {}, {}),
        (specs.FeatureSpec, f"{task}/properties/features", {}, {}),
        (specs.SynthesisSpec, f"{task}/properties/synthesis", {}, {}),
        (specs.ValidationSpec, f"{task}/properties/validation", {}, {}),
        (ShardSettings, task, {}, shard),
        (ExportOptions, f"{task}/properties/export", {}, {}),
        (specs.DownstreamSpec, ds, {}, {}),
        (specs.InitSpec, "$defs/init", {}, {}),
        (TorchModuleConfig, "$defs/torch_module", {}, {}),
        (MLPEnsembleConfig, f"{task}/properties/interpreter", {"type": "mlp"}, {}),
        (ConvInterpreterConfig, f"{task}/properties/interpreter", {"type": "conv"}, {}),
        (SegTrainConfig, ds, {}, {}),
        (RealDataSpec, f"{ds}/properties/real", {}, {"cls": "class"}),
        (PretrainConfig, "$defs/pretraining", {"pretrain": {}}, pre),
        (SceneSpec, "$defs/target", {"type": "toy_scenes"}, {}),
    ]


# fields named like a schema key that mean something else
NOT_RESTATED = {
    ("SegTrainConfig", "threads"): "None keeps the process's threads; the workflow passes downstream.threads",
}


def test_every_dataclass_default_is_the_schemas():
    """Walks the schema object each config dataclass mirrors: every field with a default whose key the
    object has (directly or by a rename) defaults to what a config that leaves the key out gets."""
    import dataclasses

    from labelfactory.config.schema import filled

    specs = _spec_classes()
    drift, compared = [], 0
    for cls, pointer, instance, renames in specs:
        got = filled(instance, pointer)  # the object's keys (and their nested objects') filled in
        for name, default in _dataclass_defaults(cls).items():
            path, node = renames.get(name, name), got
            for key in path.split("."):
                node = node.get(key, KeyError) if isinstance(node, dict) else KeyError
            if node is KeyError or (cls.__name__, name) in NOT_RESTATED:
                continue  # not a key of the object (e.g. a seed the workflow sets per run)
            if dataclasses.is_dataclass(default) and type(default) in {c for c, *_ in specs}:
                continue  # a section of its own, compared in its own row
            compared += 1
            if _plain(default) != _plain(node):
                drift.append(f"{cls.__name__}.{name} = {default!r}, schema {pointer}: {path} = {node!r}")
    assert not drift, "\n".join(drift)
    assert compared > 100


def test_configuration_reference_is_current():
    """docs/configuration.md is what scripts/config_docs.py writes from the schema today."""
    from labelfactory.config.docs import DOCS_PATH, render_markdown

    assert DOCS_PATH == REPO / "docs" / "configuration.md"
    assert DOCS_PATH.read_text() == render_markdown(), \
        "docs/configuration.md is stale: run `python scripts/config_docs.py` and commit it"


def _schema_walk(schema):
    """(resolve, branches) over ``schema``: a node with its ``$ref`` followed, and the
    ``[(key, const, branch)]`` of every ``if``/``then`` of a node (its ``allOf`` entries, and
    ``else`` chains to any depth), as the interpreter's per-type keys are written."""
    from labelfactory.config.docs import resolve_ref

    def resolve(node):
        return resolve_ref(schema, node)

    def branches(node):
        out = []
        for part in (node, *node.get("allOf", ())):
            part = resolve(part)
            if "if" in part and "properties" in resolve(part.get("then", {})):
                key, const = next((k, v["const"]) for k, v in part["if"]["properties"].items() if "const" in v)
                out.append((key, const, resolve(part["then"])))
                other = resolve(part.get("else", {}))
                if "if" in other or "allOf" in other:
                    out += branches(other)
                elif other:
                    out.append((key, other.get("properties", {}).get(key, {}).get("const"), other))
        return out

    return resolve, branches


def test_configuration_reference_covers_every_key():
    """Every key of the schema (walked through refs, maps and every branch of the interpreter's
    per-type keys) has a row; a branch's keys in the table of that branch."""
    from labelfactory.config.docs import render_markdown
    from labelfactory.config.schema import load_schema

    schema = load_schema()
    text = render_markdown(schema)
    resolve, branches = _schema_walk(schema)

    def table(title):
        """The rows of the table headed ``### title`` ('' where there is none)."""
        head = f"### {title}\n"
        return text.split(head, 1)[1].split("\n### ", 1)[0] if head in text else ""

    def paths(node, path):
        """(title of the table that must hold the row, or None for anywhere; key path)"""
        node = resolve(node)
        if isinstance(node.get("additionalProperties"), dict) and "properties" not in node:
            yield from paths(node["additionalProperties"], f"{path}.<name>")
        shared = node.get("properties", {})
        cases = branches(node)
        tables = [(f"`{path}` with `{key}: {const}`", {**shared, **then.get("properties", {})})
                  for key, const, then in cases] or [(None, shared)]
        for title, props in tables:
            for key, sub in props.items():
                yield title, f"{path}.{key}"
                yield from paths(sub, f"{path}.{key}")

    keys = [p for top, node in schema["properties"].items() for p in paths(node, top)]
    assert len(keys) > 200
    assert len({t for t, _ in keys if t}) >= 2  # the interpreter's types
    missing = [(t, k) for t, k in keys if f"| `{k}` |" not in (table(t) if t else text)]
    assert not missing, missing
    assert [f"## `{k}`" in text for k in schema["properties"]] == [True] * len(schema["properties"])


def test_every_interpreter_type_has_its_keys():
    """Each `type` the interpreter's enum offers has exactly one branch (its keys, closed with
    additionalProperties: false); a type without one would take any keys and fill no defaults."""
    from labelfactory.config.schema import load_schema, schema_node

    resolve, branches = _schema_walk(load_schema())
    node = schema_node("$defs/task/properties/interpreter")
    types = [const for key, const, _ in branches(node) if key == "type"]
    assert sorted(types) == sorted(node["properties"]["type"]["enum"])
    for key, const, then in branches(node):
        assert then.get("additionalProperties") is False and then["properties"]["type"] == {"const": const}
