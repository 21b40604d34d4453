"""Load the tillsync JSON Schemas and validate entry bodies and master-data records.

The schema files (``common.json``, ``entries/<kind>.json``, ``master/<collection>.json``)
are the contract; this module only loads them (once, lazily, through
:mod:`importlib.resources`), resolves ``$ref`` with an offline :mod:`referencing`
registry, and turns every violation into one readable :class:`Violation`.

Speed: a body is first run through a validator compiled to Python by ``fastjsonschema``
(about 15-30 µs for a sale, against about 300 µs here); a sale, the body the relay checks
most, first through a hand-written check (``_sale_ok``, about 4 µs).  Those may only say
"valid": anything they refuse, and any body holding a float, goes to the ``jsonschema``
validator, which is the reference and writes the messages.  ``tests/schemas`` checks
they agree.

Two deliberate strictnesses beyond plain JSON Schema:

* ``"integer"`` means a Python ``int`` that is not a ``bool``: ``150.0`` is *not* an
  integer here, so a float can never pass as money;
* ``format: date`` / ``format: date-time`` are asserted (a calendar-valid date), not
  just annotations.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any, cast

import fastjsonschema
from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = [
    "COLLECTIONS",
    "ENTRY_KINDS",
    "SchemaViolation",
    "UnknownCollection",
    "UnknownKind",
    "Violation",
    "entry_schema",
    "record_schema",
    "validate_entry",
    "validate_record",
]

_PACKAGE = __name__.rpartition(".")[0] or "schemas"
_ENTRIES = "entries"
_MASTER = "master"
_COMMON = "common.json"


def _root() -> Traversable:
    return files(_PACKAGE)


def _names(sub: str) -> tuple[str, ...]:
    folder = _root() / sub
    return tuple(
        sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))
    )


ENTRY_KINDS: tuple[str, ...] = _names(_ENTRIES)
"""Every log-entry kind that has a schema (``schemas/entries/<kind>.json``), sorted."""

COLLECTIONS: tuple[str, ...] = _names(_MASTER)
"""Every master-data collection that has a schema (``schemas/master/<name>.json``), sorted."""


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Violation:
    """One problem found in a body or record.

    ``path`` locates the offending value, e.g. ``"body.lines[0].qty"`` or
    ``"record.price"``; ``message`` says what is wrong with it.
    """

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SchemaViolation(ValueError):
    """A body or record does not match its schema. Carries every violation found."""

    what: str
    violations: tuple[Violation, ...]

    def __init__(self, what: str, violations: Iterable[Violation]) -> None:
        self.what = what
        self.violations = tuple(violations)
        super().__init__(what, self.violations)

    def __str__(self) -> str:
        n = len(self.violations)
        head = f"{self.what} is invalid ({n} problem{'' if n == 1 else 's'})"
        return head + ":" + "".join(f"\n  {v}" for v in self.violations)


class UnknownKind(ValueError):
    """No schema exists for this entry kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(f"unknown entry kind {kind!r}; known kinds: {', '.join(ENTRY_KINDS)}")


class UnknownCollection(ValueError):
    """No schema exists for this master-data collection."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        super().__init__(
            f"unknown collection {collection!r}; known collections: {', '.join(COLLECTIONS)}"
        )


# --------------------------------------------------------------------------- loading


def _is_integer(_checker: object, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


_Strict: type[Validator] = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)

_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("date", raises=ValueError)
def _is_date(instance: object) -> bool:
    # Shape errors are left to the schema's "pattern" so each problem is reported once.
    if isinstance(instance, str) and _DATE.fullmatch(instance):
        datetime.date.fromisoformat(instance)
    return True


@_FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(instance: object) -> bool:
    if isinstance(instance, str) and _DATE_TIME.fullmatch(instance):
        text = instance.upper()
        datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    return True


def _load(path: Traversable) -> dict[str, Any]:
    contents = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(contents, dict):
        raise TypeError(f"schema file {path.name} does not hold a JSON object")
    return contents


@dataclass(frozen=True)
class _Store:
    entries: Mapping[str, dict[str, Any]]
    master: Mapping[str, dict[str, Any]]
    registry: Registry[Any]


@functools.cache
def _store() -> _Store:
    root = _root()
    common = _load(root / _COMMON)
    entries = {k: _load(root / _ENTRIES / f"{k}.json") for k in ENTRY_KINDS}
    master = {c: _load(root / _MASTER / f"{c}.json") for c in COLLECTIONS}
    documents = [common, *entries.values(), *master.values()]
    registry: Registry[Any] = Registry().with_resources(
        (str(doc["$id"]), Resource.from_contents(doc, default_specification=DRAFT202012))
        for doc in documents
    )
    return _Store(entries=entries, master=master, registry=registry)


@functools.cache
def _validator(sub: str, name: str) -> Validator:
    store = _store()
    schema = (store.entries if sub == _ENTRIES else store.master)[name]
    return _Strict(schema, registry=store.registry, format_checker=_FORMATS)


@functools.cache
def _fast(sub: str, name: str) -> Any:
    store = _store()
    schema = (store.entries if sub == _ENTRIES else store.master)[name]
    by_id = {str(doc["$id"]).partition("#")[0]: doc
             for doc in (_load(_root() / _COMMON), *store.entries.values(),
                         *store.master.values())}
    return fastjsonschema.compile(
        schema, handlers={"https": lambda uri: by_id[uri.partition("#")[0]]}, use_default=False
    )


def _has_float(value: object) -> bool:
    kind = type(value)
    if kind is dict:
        values: Iterable[object] = value.values()  # type: ignore[attr-defined]
    elif kind is list:
        values = value  # type: ignore[assignment]
    else:
        return isinstance(value, float)
    for item in values:
        if type(item) in (dict, list, float) and _has_float(item):
            return True
    return False


def fast_valid(sub: str, name: str, instance: object) -> bool:
    """True only if the compiled validator accepts ``instance`` and it holds no float
    (or, for a sale, if ``_sale_ok`` accepts it: it checks the types itself)."""
    if sub == _ENTRIES and name == "sale" and _sale_ok(instance):
        return True
    try:
        _fast(sub, name)(instance)
    except fastjsonschema.JsonSchemaException:
        return False
    return not _has_float(instance)


# A hand-written check of the commonest body, a sale: a few µs where the compiled one
# takes 15-50.  Like that one it may only say "valid" (anything else goes on to the
# compiled validator, then the reference); it takes the patterns, limits and payment
# methods from the schema files, and stands aside unless the sale schema has exactly the
# shape it was written for (``_SALE_SCHEMA``, ``_SALE_DEFS``; ``tests/schemas`` checks it
# is in use).
_ANY = object()
_C = "https://tillsync.dev/schemas/common.json#/$defs/"
_SALE_DEFS: dict[str, Any] = {
    "id": {"type": "string", "minLength": 1, "maxLength": _ANY, "pattern": _ANY},
    "uuid": {"type": "string", "maxLength": _ANY, "pattern": _ANY},
    "money": {"type": "integer", "minimum": 0, "maximum": _ANY},
    "note": {"type": "string", "maxLength": _ANY},
    "positive_quantity": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": _ANY},
                                    {"type": "string", "maxLength": _ANY, "pattern": _ANY}]},
    "payment_method": {"enum": _ANY},
    "line": {"type": "object", "properties": {
        "product_id": {"$ref": "#/$defs/id"}, "qty": {"$ref": "#/$defs/positive_quantity"},
        "unit_price": {"$ref": "#/$defs/money"}, "discount": {"$ref": "#/$defs/money"}},
        "required": ["product_id", "qty", "unit_price"], "additionalProperties": False},
    "payment": {"type": "object", "properties": {
        "method": {"$ref": "#/$defs/payment_method"}, "amount": {"$ref": "#/$defs/money"},
        "reference": {"type": "string", "maxLength": _ANY}},
        "required": ["method", "amount"], "additionalProperties": False},
}
_SALE_SCHEMA: dict[str, Any] = {
    "$schema": _ANY, "$id": _ANY, "type": "object", "properties": {
        "lines": {"type": "array", "minItems": 1, "items": {"$ref": _C + "line"}},
        "payments": {"type": "array", "minItems": 1, "items": {"$ref": _C + "payment"}},
        "shift_client_id": {"$ref": _C + "uuid"},
        "held_transaction_client_id": {"$ref": _C + "uuid"},
        "customer_id": {"$ref": _C + "id"}, "client_total": {"$ref": _C + "money"},
        "note": {"$ref": _C + "note"}},
    "required": ["lines", "payments", "shift_client_id"], "additionalProperties": False,
}
_SALE_KEYS = frozenset(_SALE_SCHEMA["properties"])
_SALE_REQUIRED = frozenset(_SALE_SCHEMA["required"])
_LINE_KEYS = frozenset(_SALE_DEFS["line"]["properties"])
_LINE_REQUIRED = frozenset(_SALE_DEFS["line"]["required"])
_PAYMENT_KEYS = frozenset(_SALE_DEFS["payment"]["properties"])
_PAYMENT_REQUIRED = frozenset(_SALE_DEFS["payment"]["required"])
_ANNOTATIONS = ("description", "title", "x-messages", "$comment", "examples")


def _same_shape(actual: object, expected: object) -> bool:
    """``actual`` (a schema, annotations aside) is ``expected``, ``_ANY`` matching anything."""
    if expected is _ANY:
        return True
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return False
        keys = {k for k in actual if k not in _ANNOTATIONS}
        return keys == set(expected) and all(_same_shape(actual[k], expected[k])
                                             for k in expected)
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(
            _same_shape(a, e) for a, e in zip(actual, expected, strict=True))
    return type(actual) is type(expected) and actual == expected


@dataclass(frozen=True)
class _SaleRules:
    id_search: Callable[[str], object]
    id_max: int
    uuid_search: Callable[[str], object]
    uuid_max: int
    qty_search: Callable[[str], object]
    qty_max: int
    qty_len_max: int
    note_max: int
    reference_max: int
    money_max: int
    methods: frozenset[str]


@functools.cache
def _sale_rules() -> _SaleRules | None:
    """What ``_sale_ok`` checks against, or None if the schema is not the expected one."""
    defs = _load(_root() / _COMMON)["$defs"]
    if not _same_shape(_store().entries["sale"], _SALE_SCHEMA) or not all(
            _same_shape(defs.get(name), shape) for name, shape in _SALE_DEFS.items()):
        return None
    methods = defs["payment_method"]["enum"]
    qty_max, money_max = defs["positive_quantity"]["anyOf"][0]["maximum"], \
        defs["money"]["maximum"]
    if not all(type(m) is str for m in methods) or type(qty_max) is not int \
            or type(money_max) is not int:
        return None
    qty = defs["positive_quantity"]["anyOf"][1]
    return _SaleRules(
        id_search=re.compile(defs["id"]["pattern"]).search, id_max=defs["id"]["maxLength"],
        uuid_search=re.compile(defs["uuid"]["pattern"]).search,
        uuid_max=defs["uuid"]["maxLength"],
        qty_search=re.compile(qty["pattern"]).search, qty_max=qty_max,
        qty_len_max=qty["maxLength"], note_max=defs["note"]["maxLength"],
        reference_max=defs["payment"]["properties"]["reference"]["maxLength"],
        money_max=money_max, methods=frozenset(methods))


def _money(value: object, rules: _SaleRules) -> bool:
    return type(value) is int and 0 <= value <= rules.money_max


def _short(value: object, limit: int) -> bool:
    return type(value) is str and len(value) <= limit


def _record_id(value: object, rules: _SaleRules) -> bool:
    return type(value) is str and 0 < len(value) <= rules.id_max \
        and rules.id_search(value) is not None


def _sale_ok(body: object) -> bool:
    """True only if ``body`` is a valid sale (False: unsure, ask the compiled validator)."""
    rules = _sale_rules()
    if rules is None or type(body) is not dict:
        return False
    if not _SALE_REQUIRED <= body.keys() <= _SALE_KEYS:
        return False
    lines, payments = body["lines"], body["payments"]
    if type(lines) is not list or not lines or type(payments) is not list or not payments:
        return False
    for line in lines:
        if type(line) is not dict or not _LINE_REQUIRED <= line.keys() <= _LINE_KEYS:
            return False
        qty = line["qty"]
        if type(qty) is int:
            if not 1 <= qty <= rules.qty_max:
                return False
        elif type(qty) is not str or len(qty) > rules.qty_len_max \
                or rules.qty_search(qty) is None:
            return False
        if not _record_id(line["product_id"], rules) \
                or not _money(line["unit_price"], rules) \
                or ("discount" in line and not _money(line["discount"], rules)):
            return False
    for payment in payments:
        if type(payment) is not dict or not _PAYMENT_REQUIRED <= payment.keys() <= _PAYMENT_KEYS:
            return False
        method = payment["method"]
        if type(method) is not str or method not in rules.methods \
                or not _money(payment["amount"], rules) \
                or ("reference" in payment and not _short(payment["reference"],
                                                          rules.reference_max)):
            return False
    for key in ("shift_client_id", "held_transaction_client_id"):
        if key in body and (type(body[key]) is not str or len(body[key]) > rules.uuid_max
                            or rules.uuid_search(body[key]) is None):
            return False
    if "customer_id" in body and not _record_id(body["customer_id"], rules):
        return False
    if "client_total" in body and not _money(body["client_total"], rules):
        return False
    return "note" not in body or _short(body["note"], rules.note_max)


def _check_kind(kind: str) -> None:
    if kind not in ENTRY_KINDS:
        raise UnknownKind(kind)


def _check_collection(collection: str) -> None:
    if collection not in COLLECTIONS:
        raise UnknownCollection(collection)


def entry_schema(kind: str) -> dict[str, object]:
    """A copy of the JSON Schema of the body of entries of ``kind``."""
    _check_kind(kind)
    return copy.deepcopy(_store().entries[kind])


def record_schema(collection: str) -> dict[str, object]:
    """A copy of the JSON Schema of one record of ``collection``."""
    _check_collection(collection)
    return copy.deepcopy(_store().master[collection])


# --------------------------------------------------------------------------- validation


def validate_entry(kind: str, body: object) -> None:
    """Raise :class:`SchemaViolation` listing every problem if ``body`` is not a valid
    body for an entry of ``kind``; :class:`UnknownKind` if there is no such kind."""
    _check_kind(kind)
    if not fast_valid(_ENTRIES, kind, body):
        _raise_if_invalid(_validator(_ENTRIES, kind), body, "body", f"{kind} body")


def validate_record(collection: str, record: object, record_id: str | None = None) -> None:
    """Raise :class:`SchemaViolation` listing every problem if ``record`` (a whole record,
    after merging any partial update) is not valid for ``collection``;
    :class:`UnknownCollection` if there is no such collection. ``record_id`` only labels
    the error."""
    _check_collection(collection)
    if fast_valid(_MASTER, collection, record):
        return
    what = f"{collection} record" + ("" if record_id is None else f" {record_id!r}")
    _raise_if_invalid(_validator(_MASTER, collection), record, "record", what)


def _raise_if_invalid(validator: Validator, instance: object, root: str, what: str) -> None:
    # One violation per offending value: when a value breaks several keywords (a float
    # that is also negative, an empty id that also misses the pattern), a wrong type wins,
    # then whichever keyword the schema lists first.
    best: dict[tuple[tuple[int, Any], ...], tuple[int, Violation]] = {}
    for error in validator.iter_errors(cast(Any, instance)):
        rank = 0 if error.validator == "type" else 1
        for parts, message in _explain(error):
            key = tuple((0, p) if isinstance(p, int) else (1, str(p)) for p in parts)
            if key not in best or rank < best[key][0]:
                best[key] = (rank, Violation(_format_path(root, parts), message))
    if best:
        raise SchemaViolation(what, (best[k][1] for k in sorted(best)))


def _explain(error: ValidationError) -> list[tuple[list[str | int], str]]:
    """(path parts, message) pairs for one jsonschema error."""
    base: list[str | int] = list(error.absolute_path)
    instance: object = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "required" and isinstance(instance, dict):
        required = error.validator_value if isinstance(error.validator_value, list) else []
        return [
            ([*base, name], "required field is missing")
            for name in required
            if name not in instance
        ]
    if (
        error.validator == "additionalProperties"
        and error.validator_value is False
        and isinstance(instance, dict)
    ):
        allowed = list(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        extras = [
            k
            for k in instance
            if k not in allowed and not any(re.search(p, str(k)) for p in patterns)
        ]
        hint = f"; allowed fields: {', '.join(allowed)}" if allowed else "; no fields are allowed"
        return [([*base, k], f"unexpected field {k!r}{hint}") for k in extras]
    return [(base, _message(error, schema))]


def _message(error: ValidationError, schema: Mapping[str, Any]) -> str:
    keyword = str(error.validator)
    instance: object = error.instance
    is_float = isinstance(instance, float)
    custom = schema.get("x-messages")
    if isinstance(custom, dict):
        template: object = None
        if is_float and keyword in ("type", "anyOf", "oneOf"):
            template = custom.get("float")
        if template is None:
            template = custom.get(keyword)
        if isinstance(template, str):
            return template.replace("{instance}", _show(instance))
    expected = error.validator_value
    if keyword == "type":
        if is_float and _mentions(expected, "integer"):
            return f"{_show(instance)} is a float; an integer is expected"
        wanted = [expected] if isinstance(expected, str) else expected
        if isinstance(wanted, list):
            names = " or ".join(_EXPECTED.get(str(w), str(w)) for w in wanted)
            return f"{_show(instance)} is {_json_type(instance)}; expected {names}"
    if keyword in ("anyOf", "oneOf"):
        description = schema.get("description")
        if isinstance(description, str):
            return f"{_show(instance)} is not valid: {description}"
    if keyword == "minLength" and expected == 1 and isinstance(instance, str):
        return "must not be empty"
    if keyword == "maxLength" and isinstance(instance, str):
        return f"{_show(instance)} is too long ({len(instance)} characters, at most {expected})"
    if keyword == "minItems" and isinstance(expected, int) and isinstance(instance, list):
        return f"needs at least {expected} item{'' if expected == 1 else 's'}, got {len(instance)}"
    return error.message


def _mentions(expected: object, name: str) -> bool:
    if isinstance(expected, str):
        return expected == name
    return isinstance(expected, Sequence) and name in expected


def _json_type(instance: object) -> str:
    if instance is None:
        return "null"
    for cls, name in _TYPE_NAMES:
        if isinstance(instance, cls):
            return name
    return f"a {type(instance).__name__}"


_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (dict, "an object"),
    (list, "an array"),
    (tuple, "an array"),
)


_EXPECTED = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true or false)",
    "null": "null",
}


def _show(instance: object) -> str:
    text = repr(instance)
    return text if len(text) <= 60 else text[:57] + "..."


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _format_path(root: str, parts: Iterable[str | int]) -> str:
    out = root
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out
