"""The compiled fast path may only say "valid" where the reference validator agrees."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillsync.schemas import COLLECTIONS, ENTRY_KINDS, SchemaViolation, entry_schema
from tillsync.schemas.validate import (
    _ENTRIES,
    _MASTER,
    _SALE_SCHEMA,
    _raise_if_invalid,
    _sale_ok,
    _sale_rules,
    _same_shape,
    _validator,
    fast_valid,
)

UUID = "0b8f4c1e-2d3a-4f5b-9c6d-7e8f9a0b1c2d"
SALE: dict[str, Any] = {
    "lines": [{"product_id": "bread", "qty": "0.75", "unit_price": 320, "discount": 5}],
    "payments": [{"method": "cash", "amount": 235}],
    "shift_client_id": UUID,
    "customer_id": "bob",
    "client_total": 235,
}
PRODUCT: dict[str, Any] = {"name": "Bread", "sku": "B1", "price": 320, "volatile": False,
                           "active": True, "reorder_level": "2.5", "tax_rate": "5.5"}

scalars = (st.none() | st.booleans() | st.integers(-5, 10**12) | st.floats(allow_nan=False)
           | st.sampled_from(["", "x", "0.75", "-1", "0", "2026-02-30", UUID, "cash", "in",
                              "adjust", "1e3", " 1", "0.0000001", UUID.upper(),
                              "n" * 1001, "1" * 33, "r" * 101]))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3)
                      | st.dictionaries(st.sampled_from(["qty", "x", "method"]), c, max_size=2),
                      max_leaves=6)


def reference_valid(sub: str, name: str, instance: object) -> bool:
    try:
        _raise_if_invalid(_validator(sub, name), instance, "x", name)
    except SchemaViolation:
        return False
    return True


def mutate(base: dict[str, Any], path: list[str | int], value: object) -> dict[str, Any]:
    import copy

    out = copy.deepcopy(base)
    target: Any = out
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return out


SALE_PATHS: list[list[str | int]] = [
    ["lines", 0, "qty"], ["lines", 0, "unit_price"], ["lines", 0, "discount"],
    ["lines", 0, "product_id"], ["payments", 0, "method"], ["payments", 0, "amount"],
    ["shift_client_id"], ["customer_id"], ["client_total"], ["lines"], ["payments"], ["extra"],
]


@given(st.sampled_from(SALE_PATHS), values)
def test_fast_path_never_accepts_a_sale_the_reference_refuses(
    path: list[str | int], value: object
) -> None:
    body = mutate(SALE, path, value)
    if fast_valid(_ENTRIES, "sale", body):
        assert reference_valid(_ENTRIES, "sale", body), body


@given(st.sampled_from(["name", "sku", "price", "volatile", "reorder_level", "tax_rate",
                        "barcode", "colour"]), values)
def test_fast_path_never_accepts_a_product_the_reference_refuses(
    field: str, value: object
) -> None:
    record = {**PRODUCT, field: value}
    if fast_valid(_MASTER, "products", record):
        assert reference_valid(_MASTER, "products", record), record


@pytest.mark.parametrize("kind", ENTRY_KINDS)
@given(value=st.dictionaries(st.sampled_from(["lines", "amount", "qty", "direction",
                                              "cashier_id", "method", "shift_client_id"]),
                             values, max_size=4))
def test_fast_path_agrees_on_arbitrary_bodies(kind: str, value: dict[str, Any]) -> None:
    if fast_valid(_ENTRIES, kind, value):
        assert reference_valid(_ENTRIES, kind, value), value


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_the_fast_path_compiles_for_every_collection(collection: str) -> None:
    assert fast_valid(_MASTER, collection, {}) == reference_valid(_MASTER, collection, {})


HELD_SALE: dict[str, Any] = {
    **SALE, "held_transaction_client_id": UUID, "note": "n",
    "lines": [{"product_id": "bread", "qty": 2, "unit_price": 320},
              {"product_id": "kg-apples", "qty": "1.5", "unit_price": 410, "discount": 0}],
    "payments": [{"method": "card", "amount": 1000, "reference": "r1"},
                 {"method": "cash", "amount": 255}],
}
MORE_SALE_PATHS: list[list[str | int]] = [
    ["lines", 1, "qty"], ["lines", 1, "product_id"], ["lines", 1, "extra"],
    ["payments", 0, "reference"], ["payments", 1, "extra"], ["payments", 1], ["lines", 0],
    ["held_transaction_client_id"], ["note"], ["shift_client_id"], ["customer_id"],
]


@given(st.sampled_from(MORE_SALE_PATHS), values)
def test_the_hand_written_sale_check_never_accepts_a_sale_the_reference_refuses(
    path: list[str | int], value: object
) -> None:
    body = mutate(HELD_SALE, path, value)
    if _sale_ok(body):
        assert reference_valid(_ENTRIES, "sale", body), body


def test_the_hand_written_sale_check_is_in_use() -> None:
    """It stands aside if the sale schema changes shape: then update ``_SALE_SCHEMA`` and
    ``_SALE_DEFS`` in schemas/validate.py (or drop the check)."""
    assert _sale_rules() is not None
    assert _sale_ok(SALE) and _sale_ok(HELD_SALE)


# A quantity string's 32-character bound is never reached: its pattern allows at most 16
# (9 digits, a point, 6 decimals), which the range tests cover.
@pytest.mark.parametrize(("path", "value"), [
    (["note"], "n" * 1001), (["payments", 0, "reference"], "r" * 101),
])
def test_the_hand_written_sale_check_keeps_the_schemas_string_limits(
        path: list[str | int], value: str) -> None:
    body = mutate(HELD_SALE, path, value)
    assert not _sale_ok(body) and not reference_valid(_ENTRIES, "sale", body)
    assert _sale_ok(mutate(HELD_SALE, path, value[:-1]))


def test_a_sale_schema_of_another_shape_turns_the_hand_written_check_off() -> None:
    sale = entry_schema("sale")
    assert _same_shape(sale, _SALE_SCHEMA)
    properties: Any = sale["properties"]
    assert not _same_shape({**sale, "properties": {**properties, "tip": {"type": "integer"}}},
                           _SALE_SCHEMA)
    assert not _same_shape({**sale, "required": ["lines"]}, _SALE_SCHEMA)
    assert not _same_shape({**sale, "additionalProperties": True}, _SALE_SCHEMA)


TRICKY: list[object] = [0, -1, 1, 2**70, True, False, 1.0, 0.5, None, "", "x", "0", "0.0",
                        "1.", "0.0000001", "1e3", " 1", "1\n", "cash\n", "CASH", "in",
                        UUID.upper(), UUID + "\n", "a" * 64, "a" * 65, "-x", [], {}, [{}]]


@pytest.mark.parametrize("path", SALE_PATHS + MORE_SALE_PATHS)
def test_the_hand_written_sale_check_refuses_what_the_reference_refuses_at_the_edges(
    path: list[str | int]
) -> None:
    for value in TRICKY:
        body = mutate(HELD_SALE, path, value)
        if _sale_ok(body):
            assert reference_valid(_ENTRIES, "sale", body), (path, value)
