"""Hypothesis strategies of entry bodies, built from the schema files themselves.

``bodies(kind)`` walks ``schemas/entries/<kind>.json`` (and what it refers to in
``common.json``) and draws values the schema accepts, leaning on the extremes: the
bounds of every integer range, the longest decimal strings the quantity patterns allow,
the shortest arrays allowed.  Record ids and client ids are drawn now and then from
``ids`` / ``uuids`` so that bodies name products and shifts a test has set up.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

from hypothesis import strategies as st

from tillsync.schemas import entry_schema

Strategy = st.SearchStrategy[Any]


def _common(ref: str) -> dict[str, Any]:
    """The definition ``ref`` names: every reference of the entry schemas is to
    ``common.json`` (absolute from an entry schema, ``#/...`` within common.json)."""
    document, _, pointer = ref.partition("#")
    common = _common_doc()
    assert document in ("", common["$id"]), ref
    node: Any = common
    for part in pointer.strip("/").split("/"):
        node = node[part]
    return dict(node)


@functools.cache
def _common_doc() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (files("tillsync.schemas") / "common.json").read_text(encoding="utf-8"))
    return loaded


def _integers(schema: dict[str, Any]) -> Strategy:
    low, high = schema.get("minimum"), schema.get("maximum")
    edges = [v for v in (low, high, 0, 1, -1) if v is not None
             and (low is None or v >= low) and (high is None or v <= high)]
    drawn = st.one_of(st.sampled_from(edges), st.integers(low, high))
    forbidden = schema.get("not", {}).get("const")
    return drawn.filter(lambda v: v != forbidden) if "not" in schema else drawn


def _decimal_strings(pattern: str) -> Strategy:
    """Decimal strings the quantity ``pattern`` accepts, long ones often."""
    search = re.compile(pattern).search
    whole = st.one_of(st.just("999999999"), st.just("0"), st.integers(0, 999_999_999).map(str))
    places = st.one_of(st.just(""), st.just(".999999"), st.just(".000001"),
                       st.integers(0, 999_999).map(lambda n: f".{n:06d}"),
                       st.from_regex(r"\.[0-9]{1,6}", fullmatch=True))
    sign = st.sampled_from(["", "-"])
    return st.tuples(sign, whole, places).map("".join).filter(lambda s: bool(search(s)))


def _strings(schema: dict[str, Any], name: str, ids: Sequence[str]) -> Strategy:
    if schema.get("format") == "date":
        return st.dates().map(lambda d: d.isoformat())
    if schema.get("format") == "date-time":
        return st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 1, 1),
                            timezones=st.just(UTC)).map(
            lambda t: t.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    pattern = schema.get("pattern")
    if name == "id" and ids:
        return st.one_of(st.sampled_from(list(ids)),
                         st.from_regex(pattern, fullmatch=True).filter(
                             lambda s: len(s) <= schema.get("maxLength", 64)))
    if pattern is not None:
        if "[0-9]{1,6}" in pattern:  # a quantity: its patterns use lookaheads
            return _decimal_strings(pattern)
        return st.from_regex(pattern, fullmatch=True)
    return st.text(min_size=schema.get("minLength", 0), max_size=40)


def values(schema: dict[str, Any], ids: Sequence[str] = (), uuids: Sequence[str] = (),
           name: str = "") -> Strategy:
    """Values ``schema`` accepts (``name``: the common definition it came from)."""
    if "$ref" in schema:
        ref = schema["$ref"]
        target = _common(ref)
        defined = ref.rpartition("/")[2]
        if defined == "uuid" and uuids:
            return st.one_of(st.sampled_from(list(uuids)), values(target, ids, uuids, defined))
        return values(target, ids, uuids, defined)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    if "anyOf" in schema:
        return st.one_of(*(values(s, ids, uuids, name) for s in schema["anyOf"]))
    kind = schema.get("type")
    if kind == "integer":
        return _integers(schema)
    if kind == "string":
        return _strings(schema, name, ids)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(values(schema["items"], ids, uuids), min_size=low, max_size=low + 3)
    if kind == "object":
        return _objects(schema, ids, uuids)
    raise NotImplementedError(f"no strategy for {schema}")


def _objects(schema: dict[str, Any], ids: Sequence[str], uuids: Sequence[str]) -> Strategy:
    properties: dict[str, Any] = schema.get("properties", {})
    if "if" in schema:  # stock_move: qty follows direction (if/then/else)
        return _conditional(schema, ids, uuids)
    if "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        return st.dictionaries(st.text(min_size=1, max_size=8),
                               values(schema["additionalProperties"], ids, uuids), max_size=3)
    required = {k: values(v, ids, uuids) for k, v in properties.items()
                if k in schema.get("required", [])}
    optional = {k: values(v, ids, uuids) for k, v in properties.items()
                if k not in schema.get("required", []) and v}
    return st.fixed_dictionaries(required, optional=optional)


def _conditional(schema: dict[str, Any], ids: Sequence[str], uuids: Sequence[str]) -> Strategy:
    condition = schema["if"]["properties"]
    (key, test), = condition.items()
    plain = {k: v for k, v in schema.items() if k not in ("if", "then", "else")}

    def build(choice: Any) -> Strategy:
        branch = schema["then"] if choice == test["const"] else schema["else"]
        merged = {**plain, "properties": {**plain["properties"], **branch["properties"],
                                          key: {"const": choice}}}
        return _objects(merged, ids, uuids)

    return values(plain["properties"][key]).flatmap(build)


def bodies(kind: str, ids: Sequence[str] = (), uuids: Sequence[str] = ()) -> Strategy:
    """Bodies of entries of ``kind`` that its schema accepts, extremes included."""
    return values(entry_schema(kind), ids, uuids)
