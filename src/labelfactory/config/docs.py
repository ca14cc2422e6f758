"""The configuration reference, written from the schema (``docs/configuration.md``).

:func:`render_markdown` walks ``workflow/schemas/config.schema.yaml``: one section
per top-level key, one table per object (key path, type or allowed values,
default, the schema's ``description``). ``scripts/config_docs.py`` writes the
file; a test fails when it is stale, so the reference changes with the schema.
"""

from __future__ import annotations

import re
from pathlib import Path

from labelfactory.config.schema import REPO_ROOT, load_schema

DOCS_PATH = REPO_ROOT / "docs" / "configuration.md"

_HEADER = """\
# Configuration reference

<!-- Generated from workflow/schemas/config.schema.yaml by scripts/config_docs.py: edit the schema, then
     run `python scripts/config_docs.py` (tests/test_config.py fails while this file is stale). -->

{description}

A key path's `<name>` is a key of your choosing (letters, digits, `_`, `.`, `-`). A key whose default
is "not set" stays out of the configuration unless you give it (the code's own default then applies).
"""


def render_markdown(schema: dict | None = None) -> str:
    """The Markdown reference of ``schema`` (default: the workflow's)."""
    schema = load_schema() if schema is None else schema
    out = [_HEADER.format(description=_cell(_text(schema.get("description", ""))))]
    required = set(schema.get("required", ()))
    for key, node in schema["properties"].items():
        node = resolve_ref(schema, node)
        out.append(f"## `{key}`\n")
        if node.get("description"):
            out.append(_cell(_text(node["description"])) + "\n")
        facts = [f"Type: {_type(schema, node)}."]
        if key in required:
            facts.append("Required.")
        elif "default" in node:
            facts.append(f"Default: `{_value(node['default'])}`.")
        out.append(" ".join(facts) + "\n")
        out += _tables(schema, node, key)
    return "\n".join(out).rstrip() + "\n"


def write_markdown(path: str | Path = DOCS_PATH) -> Path:
    """Write the reference to ``path`` (``docs/configuration.md``)."""
    path = Path(path)
    path.write_text(render_markdown())
    return path


# --- the walk -----------------------------------------------------------------------------------
def resolve_ref(schema: dict, node: dict) -> dict:
    """``node`` with its ``$ref`` (``#/$defs/...``) followed; its own keys win over the target's."""
    while "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _map_value(schema: dict, node: dict) -> dict | None:
    """The schema of a map's values (an object keyed by names of your choosing), or None."""
    value = node.get("additionalProperties")
    return resolve_ref(schema, value) if isinstance(value, dict) and "properties" not in node else None


def _tables(schema: dict, node: dict, path: str) -> list[str]:
    """A table of ``node``'s keys (a table per branch where its keys depend on a ``const``: one per
    interpreter type), then the tables of every object among them, depth first."""
    value = _map_value(schema, node)
    if value is not None:
        return _tables(schema, value, f"{path}.<name>") if _is_object(value) else []
    if not node.get("properties"):
        return []
    out = []
    branches = _branches(schema, node)
    if not branches:
        out.append(_table(schema, node["properties"], node.get("required", ()), path, f"`{path}`"))
    for title, props, required in branches:
        out.append(_table(schema, props, required, path, f"`{path}` {title}"))
    seen = set()
    for _, props, _ in branches or [(None, node["properties"], ())]:
        for key, sub in props.items():
            sub = resolve_ref(schema, sub)
            if key not in seen and (_is_object(sub) or _map_value(schema, sub) is not None):
                seen.add(key)
                out += _tables(schema, sub, f"{path}.{key}")
    return out


def _branches(schema: dict, node: dict) -> list[tuple[str, dict, set]]:
    """``[(title, properties, required)]`` of an object whose keys depend on a ``const`` (the
    interpreter's ``type``): the shared keys with each branch's, one entry per branch however the
    branches are written (``allOf`` of ``if``/``then``, as the interpreter's are, or ``if``/``then``/
    ``else`` chains, nested to any depth); ``[]`` for a plain object."""
    out = []
    for key, value, branch in _cases(schema, node):
        branch = resolve_ref(schema, branch)
        props = {**node["properties"], **{k: v for k, v in branch.get("properties", {}).items() if k != key}}
        required = {*node.get("required", ()), *branch.get("required", ())}
        out.append((f"with `{key}: {_value(value)}`" if key is not None else "otherwise", props, required))
    return out


def _cases(schema: dict, node: dict) -> list[tuple[str | None, object, dict]]:
    """``[(key, const, branch schema)]`` of every ``if``/``then`` (and ``else``) in ``node`` and its
    ``allOf`` whose ``if`` is a key's ``const`` and whose ``then`` gives keys; an ``else`` gets its
    own ``const`` of ``key`` if it names one, else ``(None, None, ...)``."""
    out = []
    for part in (node, *node.get("allOf", ())):
        part = resolve_ref(schema, part)
        if "if" not in part or "then" not in part or "properties" not in resolve_ref(schema, part["then"]):
            continue
        key, const = next(((k, v["const"]) for k, v in part["if"].get("properties", {}).items() if "const" in v),
                          (None, None))
        if key is None:
            continue
        out.append((key, const, part["then"]))
        other = part.get("else")
        if other is None:
            continue
        other = resolve_ref(schema, other)
        if "if" in other or "allOf" in other:
            out += _cases(schema, other)
        else:
            value = other.get("properties", {}).get(key, {})
            out.append((key, value["const"], other) if "const" in value else (None, None, other))
    return out


def _is_object(node: dict) -> bool:
    kinds = node.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    return "object" in kinds and bool(node.get("properties"))


def _table(schema: dict, props: dict, required, path: str, title: str) -> str:
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for key, raw in props.items():
        sub = resolve_ref(schema, raw)
        if key in required:
            default = "required"
        elif "default" in raw:  # a $ref's target's default is not filled in where it is referenced
            default = f"`{_value(raw['default'])}`"
        else:
            default = "not set"
        desc = _text(sub.get("description", ""))
        if _is_object(sub) or (_map_value(schema, sub) is not None and _is_object(_map_value(schema, sub))):
            desc = (desc + " " if desc else "") + "(table below)"
        rows.append(f"| `{path}.{key}` | {_cell(_type(schema, sub))} | {default} | {_cell(desc)} |")
    return f"### {title}\n\n" + "\n".join(rows) + "\n"


# --- words ------------------------------------------------------------------------------------------
def _type(schema: dict, node: dict) -> str:
    """A schema's type, allowed values and bounds in words: ``integer ≥ 1``, ``one of `a`, `b```..."""
    node = resolve_ref(schema, node)
    for combinator in ("oneOf", "anyOf"):
        if combinator in node:
            return " or ".join(_type(schema, s) for s in node[combinator])
    if "const" in node:
        return f"`{_value(node['const'])}`"
    if "enum" in node:
        return "one of " + ", ".join(f"`{_value(v)}`" for v in node["enum"])
    kinds = node.get("type", "any")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    words = []
    for kind in kinds:
        if kind == "array" and isinstance(node.get("items"), dict):
            word = f"array of {_type(schema, node['items'])}"
        elif kind == "object" and _map_value(schema, node) is not None:
            word = f"map of `<name>` to {_type(schema, _map_value(schema, node))}"
        else:
            word = kind
        words.append(word + _bounds(node, kind))
    return " or ".join(words)


def _bounds(node: dict, kind: str) -> str:
    """`` ≥ 1``, `` in (0, 1]``, `` (2 items)``, `` matching `...` `` for the bounds that apply to ``kind``."""
    if kind in ("integer", "number"):
        lo = ("[", node["minimum"]) if "minimum" in node else ("(", node.get("exclusiveMinimum"))
        hi = ("]", node["maximum"]) if "maximum" in node else (")", node.get("exclusiveMaximum"))
        if lo[1] is not None and hi[1] is not None:
            return f" in {lo[0]}{_value(lo[1])}, {_value(hi[1])}{hi[0]}"
        if lo[1] is not None:
            return f" {'≥' if lo[0] == '[' else '>'} {_value(lo[1])}"
        if hi[1] is not None:
            return f" {'≤' if hi[0] == ']' else '<'} {_value(hi[1])}"
    if kind == "array":
        lo, hi = node.get("minItems"), node.get("maxItems")
        parts = ["unique"] if node.get("uniqueItems") else []
        if lo is not None and lo == hi:
            parts.append(f"{lo} items")
        elif lo or hi is not None:
            parts.append(f"{lo or 0}{f' to {hi}' if hi is not None else '+'} items")
        return f" ({', '.join(parts)})" if parts else ""
    if kind == "string":
        if "pattern" in node:
            return f" matching `{node['pattern']}`"
        if node.get("minLength"):
            return " (not empty)"
    if kind == "object" and node.get("minProperties"):
        return f" ({node['minProperties']}+ keys)"
    return ""


def _value(v) -> str:
    """A value as a YAML config writes it (flow style)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, str) and (not v or re.search(r"[:#\[\]{},]|^\s|\s$", v)):
        return repr(v)
    return str(v)


def _text(s: str) -> str:
    return " ".join(str(s).split())


def _cell(s: str) -> str:
    """Table-safe: pipes escaped, and outside code spans ``<`` too (``<id>`` is no HTML tag)."""
    parts = s.replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "\\<") for i, p in enumerate(parts))


__all__ = ["DOCS_PATH", "render_markdown", "write_markdown"]
