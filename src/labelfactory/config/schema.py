"""The configuration's JSON schema: validation that fills defaults, and errors in words.

``workflow/schemas/config.schema.yaml`` is the single source of truth for keys,
types, ranges and defaults; :func:`schema_errors` applies it (filling defaults,
as Snakemake's validator does) and lists every violation.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message says which key and why."""


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    """The parsed schema (cached: treat it as read-only)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _filling_validator(schema: dict):
    """A validator of ``schema`` that fills in defaults on the way (as Snakemake's
    ``validate(set_default=True)`` does, but without stopping at the first error)."""
    from jsonschema import Draft202012Validator, validators

    properties = Draft202012Validator.VALIDATORS["properties"]

    def fill_defaults(validator, props, instance, schema):
        if validator.is_type(instance, "object"):
            for key, sub in props.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from properties(validator, props, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": fill_defaults})(schema)


def schema_errors(cfg: dict) -> list:
    """Every schema violation in ``cfg``, filling in defaults on the way."""
    return list(_filling_validator(load_schema()).iter_errors(cfg))


def schema_node(pointer: str) -> dict:
    """The schema at a JSON pointer without the ``#/``, e.g. ``$defs/task/properties/image``."""
    node = load_schema()
    for part in filter(None, pointer.split("/")):
        node = node[part]
    return node


def filled(instance: Any, pointer: str) -> Any:
    """A copy of ``instance`` with the defaults of the schema at ``pointer`` filled in
    (also in nested objects, and in the branch an ``if``/``then``/``else`` takes)."""
    instance = copy.deepcopy(instance)
    sub = {**schema_node(pointer), "$defs": load_schema()["$defs"]}  # so that its "#/$defs/..." refs resolve
    for _ in _filling_validator(sub).iter_errors(instance):
        pass
    return instance


def schema_default(pointer: str) -> Any:
    """What a config that leaves out the key at ``pointer`` gets: its ``default``, filled in
    (``$defs/task/properties/image`` → ``{"size": None, "crop": None}``)."""
    node = schema_node(pointer)
    if "default" not in node:
        raise KeyError(f"the schema gives {pointer} no default")
    return filled(node["default"], pointer)


def schema_message(err) -> str:
    """``key.path: what is wrong`` for one jsonschema error, with what is allowed
    where the validator's own message does not say it."""
    where = ".".join(map(str, err.absolute_path)) or "<root>"
    msg = err.message
    if err.validator == "additionalProperties" and err.validator_value is False:
        msg += f" (allowed: {', '.join(err.schema.get('properties', {}))})"
    elif err.validator in ("oneOf", "anyOf") and err.context:
        msg += f" (allowed: {'; or '.join(describe(s) for s in err.validator_value)})"
    elif "propertyNames" in err.absolute_schema_path:
        msg = f"key {msg}"
    return f"{where}: {msg}"


def describe(schema: dict) -> str:
    """A schema's allowed values in words: ``one of 'all'``, ``array of string``, ..."""
    if "enum" in schema:
        return "one of " + ", ".join(map(repr, schema["enum"]))
    kind = schema.get("type", "any value")
    text = " or ".join(kind) if isinstance(kind, list) else kind
    if "pattern" in schema:
        text += f" matching {schema['pattern']!r}"
    if isinstance(schema.get("items"), dict):
        text += f" of {describe(schema['items'])}"
    return text
