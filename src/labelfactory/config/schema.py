"""The configuration's JSON schema: validation that fills defaults, and errors in words.

``workflow/schemas/config.schema.yaml`` is the single source of truth for keys,
types, ranges and defaults; :func:`schema_errors` applies it (filling defaults,
as Snakemake's validator does) and lists every violation.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message says which key and why."""


def schema_errors(cfg: dict) -> list:
    """Every schema violation in ``cfg``, filling in defaults on the way (as Snakemake's
    ``validate(set_default=True)`` does, but without stopping at the first error)."""
    from jsonschema import Draft202012Validator, validators

    properties = Draft202012Validator.VALIDATORS["properties"]

    def fill_defaults(validator, props, instance, schema):
        if validator.is_type(instance, "object"):
            for key, sub in props.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from properties(validator, props, instance, schema)

    validator = validators.extend(Draft202012Validator, {"properties": fill_defaults})
    return list(validator(yaml.safe_load(SCHEMA_PATH.read_text())).iter_errors(cfg))


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
