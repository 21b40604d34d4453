"""The compiled fast path may only say "valid" where the reference validator agrees."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import COLLECTIONS, ENTRY_KINDS, SchemaViolation
from schemas.validate import _ENTRIES, _MASTER, _raise_if_invalid, _validator, fast_valid

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
                              "adjust", "1e3", " 1", "0.0000001", UUID.upper()]))
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
