"""Tests of the language-neutral JSON Schemas and the Python validator in ``schemas``."""

from __future__ import annotations

import json
import pickle
from decimal import Decimal
from importlib.resources import files
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from tillsync.schemas import (
    COLLECTIONS,
    ENTRY_KINDS,
    SchemaViolation,
    UnknownCollection,
    UnknownKind,
    Violation,
    entry_schema,
    record_schema,
    validate_entry,
    validate_record,
)
from tillsync.schemas.limits import INTEGER_MAX, QUANTITY_LIMIT

SHIFT = "0b8f4c1e-2d3a-4f5b-9c6d-7e8f9a0b1c2d"
SALE = "5d2c9a4e-8f1b-4c3d-a2e5-6b7c8d9e0f1a"
LINE = {"product_id": "p1", "qty": 2, "unit_price": 150}

# One minimal valid body per kind, and one clearly wrong one.
VALID: dict[str, dict[str, Any]] = {
    "sale": {
        "lines": [LINE],
        "payments": [{"method": "cash", "amount": 300}],
        "shift_client_id": SHIFT,
    },
    "held_sale": {"lines": [LINE]},
    "shift_open": {"cashier_id": "c1", "opening_cash": 10000},
    "shift_close": {"open_shift_client_id": SHIFT, "closing_cash": 12345},
    "cash_movement": {
        "direction": "out",
        "amount": 5000,
        "reason": "bank drop",
        "shift_client_id": SHIFT,
    },
    "stock_move": {"product_id": "p1", "direction": "in", "qty": 12, "reason": "delivery"},
    "refund": {
        "original_sale_client_id": SALE,
        "lines": [LINE],
        "method": "cash",
        "amount": 300,
        "reason": "damaged",
    },
    "customer_payment": {"customer_id": "cust-1", "amount": 2500, "method": "card"},
    "purchase_order": {
        "supplier_id": "s1",
        "lines": [{"product_id": "p1", "qty": 24, "unit_cost": 80}],
    },
    "journal_entry": {
        "lines": [
            {"account": "6000", "debit": 1000, "credit": 0},
            {"account": "1000", "debit": 0, "credit": 1000},
        ]
    },
    "attendance": {"cashier_id": "c1", "action": "clock_in"},
    "leave_request": {
        "cashier_id": "c1",
        "start_date": "2024-07-01",
        "end_date": "2024-07-14",
        "leave_type": "annual",
    },
    "expense": {
        "amount": 899,
        "category": "cleaning",
        "description": "mop",
        "method": "cash",
    },
}

INVALID: dict[str, dict[str, Any]] = {
    "sale": {**VALID["sale"], "lines": []},
    "held_sale": {"lines": [{"product_id": "p1", "qty": 1}]},
    "shift_open": {"cashier_id": "c1", "opening_cash": -1},
    "shift_close": {"open_shift_client_id": "not-a-uuid", "closing_cash": 0},
    "cash_movement": {**VALID["cash_movement"], "direction": "sideways"},
    "stock_move": {**VALID["stock_move"], "qty": 0},
    "refund": {**VALID["refund"], "method": "cheque"},
    "customer_payment": {**VALID["customer_payment"], "method": "account"},
    "purchase_order": {"supplier_id": "s1", "lines": [{"product_id": "p1", "qty": 1}]},
    "journal_entry": {"lines": [{"account": "6000", "debit": 1000, "credit": 0}]},
    "attendance": {"cashier_id": "c1", "action": "lunch"},
    "leave_request": {**VALID["leave_request"], "start_date": "2024-02-30"},
    "expense": {**VALID["expense"], "amount": 0},
}

VALID_RECORDS: dict[str, dict[str, Any]] = {
    "products": {"name": "Bread", "sku": "BRD-1", "price": 320},
    "customers": {"name": "Ada"},
    "suppliers": {"name": "Mill & Co"},
    "cashiers": {"name": "Bob", "role": "cashier"},
    "settings": {},
}

INVALID_RECORDS: dict[str, dict[str, Any]] = {
    "products": {"name": "Bread", "sku": "BRD-1"},
    "customers": {"name": "Ada", "credit_limit": 10.5},
    "suppliers": {"name": ""},
    "cashiers": {"name": "Bob", "role": "cashier", "pin": "12ab"},
    "settings": {"currency": "euro"},
}


def problems(kind: str, body: object) -> tuple[Violation, ...]:
    with pytest.raises(SchemaViolation) as info:
        validate_entry(kind, body)
    return info.value.violations


def record_problems(collection: str, record: object) -> tuple[Violation, ...]:
    with pytest.raises(SchemaViolation) as info:
        validate_record(collection, record)
    return info.value.violations


def sale_with(**line: object) -> dict[str, Any]:
    return {**VALID["sale"], "lines": [{**LINE, **line}]}


# ----------------------------------------------------------------- discovery and files


def test_kinds_and_collections_are_discovered_sorted() -> None:
    assert ENTRY_KINDS == tuple(sorted(VALID))
    assert COLLECTIONS == ("cashiers", "customers", "products", "settings", "suppliers")


def _schema_files() -> list[str]:
    root = files("tillsync.schemas")
    names = ["common.json"]
    for sub in ("entries", "master"):
        names += [f"{sub}/{p.name}" for p in (root / sub).iterdir() if p.name.endswith(".json")]
    return sorted(names)


@pytest.mark.parametrize("name", _schema_files())
def test_each_schema_file_is_a_valid_2020_12_schema(name: str) -> None:
    schema = json.loads((files("tillsync.schemas") / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://tillsync.dev/schemas/{name}"
    if name != "common.json":
        assert schema["title"] and schema["description"]
        assert schema["additionalProperties"] is False


def _objects(node: object) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if node.get("type") == "object":
            found.append(node)
        for value in node.values():
            found += _objects(value)
    elif isinstance(node, list):
        for value in node:
            found += _objects(value)
    return found


@pytest.mark.parametrize("name", _schema_files())
def test_every_object_schema_is_closed(name: str) -> None:
    schema = json.loads((files("tillsync.schemas") / name).read_text(encoding="utf-8"))
    for obj in _objects(schema):
        assert "additionalProperties" in obj, obj


def test_schema_accessors_return_copies() -> None:
    schema = entry_schema("sale")
    assert schema["$id"] == "https://tillsync.dev/schemas/entries/sale.json"
    schema["required"] = []
    assert entry_schema("sale")["required"] == ["lines", "payments", "shift_client_id"]
    assert record_schema("products")["title"] == "Product"


# ----------------------------------------------------------------- every kind


@pytest.mark.parametrize("kind", sorted(VALID))
def test_minimal_valid_body_passes(kind: str) -> None:
    validate_entry(kind, VALID[kind])


@pytest.mark.parametrize("kind", sorted(INVALID))
def test_wrong_body_fails(kind: str) -> None:
    assert problems(kind, INVALID[kind])


@pytest.mark.parametrize("kind", ENTRY_KINDS)
def test_body_must_be_an_object(kind: str) -> None:
    (v,) = problems(kind, [])
    assert v == Violation("body", "[] is an array; expected an object")


@pytest.mark.parametrize("collection", sorted(VALID_RECORDS))
def test_minimal_valid_record_passes(collection: str) -> None:
    validate_record(collection, VALID_RECORDS[collection])


@pytest.mark.parametrize("collection", sorted(INVALID_RECORDS))
def test_wrong_record_fails(collection: str) -> None:
    assert record_problems(collection, INVALID_RECORDS[collection])


def test_full_bodies_pass() -> None:
    validate_entry(
        "sale",
        {
            "lines": [
                {"product_id": "bread", "qty": "0.75", "unit_price": 400, "discount": 20},
                {"product_id": SALE, "qty": 1, "unit_price": 99},
            ],
            "payments": [
                {"method": "card", "amount": 200, "reference": "auth 1234"},
                {"method": "account", "amount": 179},
            ],
            "shift_client_id": SHIFT,
            "held_transaction_client_id": SALE,
            "customer_id": "cust-1",
            "client_total": 379,
            "note": "",
        },
    )
    validate_entry(
        "refund",
        {**VALID["refund"], "restock": False, "customer_id": "c", "shift_client_id": SHIFT},
    )
    validate_entry("purchase_order", {**VALID["purchase_order"], "expected_date": "2024-02-29"})
    validate_record(
        "products",
        {
            "name": "Tomatoes",
            "sku": "TOM",
            "barcode": "2000000000015",
            "price": 349,
            "tax_rate": "5.5",
            "volatile": True,
            "reorder_level": "2.5",
            "category": "veg",
            "active": True,
            "unit": "kg",
        },
    )
    validate_record(
        "settings",
        {
            "store_name": "Corner shop",
            "currency": "EUR",
            "tax_rates": {"standard": "20", "reduced": "5.5", "zero": "0"},
            "ticket_prefix": "T1-",
        },
    )
    validate_record("cashiers", {"name": "Eve", "role": "admin", "pin": "0042"})
    validate_record("cashiers", {"name": "Eve", "role": "admin", "pin_hash": "scrypt$..."})


# ----------------------------------------------------------------- quantities


def test_weighed_line_of_three_quarters_of_a_kilo_passes() -> None:
    validate_entry("sale", sale_with(qty="0.75"))


@pytest.mark.parametrize(
    ("qty", "message"),
    [
        ("0,75", "'0,75' is not a positive exact quantity"),
        (0.75, "0.75 is a float; quantities are exact"),
        ("-1", "'-1' is not a positive exact quantity"),
        ("0", "'0' is not a positive exact quantity"),
        ("0.000", "'0.000' is not a positive exact quantity"),
        (0, "0 is not a positive exact quantity"),
        ("1.1234567", "'1.1234567' is not a positive exact quantity"),
        ("01", "'01' is not a positive exact quantity"),
        (True, "True is not a positive exact quantity"),
        (2.0, "2.0 is a float; quantities are exact"),
    ],
)
def test_bad_line_quantities_fail(qty: object, message: str) -> None:
    (v,) = problems("sale", sale_with(qty=qty))
    assert v.path == "body.lines[0].qty"
    assert v.message.startswith(message)


def test_quantity_message_matches_spec() -> None:
    (v,) = problems("stock_move", {**VALID["stock_move"], "direction": "adjust", "qty": "0,75"})
    assert str(v) == (
        "body.qty: '0,75' is not a non-zero exact quantity "
        '(non-zero integer or decimal string such as "-2.5")'
    )


@pytest.mark.parametrize("qty", ["-2.5", "2.5", -3, 7, "-0.000001"])
def test_stock_adjust_takes_a_signed_nonzero_delta(qty: object) -> None:
    validate_entry("stock_move", {**VALID["stock_move"], "direction": "adjust", "qty": qty})


@pytest.mark.parametrize("qty", ["0", 0, "-0", "0.0", "-0.00", -2.5, "abc"])
def test_stock_adjust_rejects_zero_and_inexact(qty: object) -> None:
    (v,) = problems("stock_move", {**VALID["stock_move"], "direction": "adjust", "qty": qty})
    assert v.path == "body.qty"


@pytest.mark.parametrize("direction", ["in", "out"])
@pytest.mark.parametrize("qty", ["-2.5", -1, 0, "0"])
def test_stock_in_and_out_reject_non_positive(direction: str, qty: object) -> None:
    body = {**VALID["stock_move"], "direction": direction, "qty": qty}
    (v,) = problems("stock_move", body)
    assert v.path == "body.qty"
    assert "positive" in v.message


@pytest.mark.parametrize("direction", ["in", "out"])
def test_stock_in_and_out_take_decimal_strings(direction: str) -> None:
    validate_entry("stock_move", {**VALID["stock_move"], "direction": direction, "qty": "12.5"})


def test_reorder_level_may_be_zero_but_not_negative() -> None:
    validate_record("products", {**VALID_RECORDS["products"], "reorder_level": 0})
    validate_record("products", {**VALID_RECORDS["products"], "reorder_level": "0.5"})
    (v,) = record_problems("products", {**VALID_RECORDS["products"], "reorder_level": "-1"})
    assert v.path == "record.reorder_level"


# ----------------------------------------------------------------- money


@pytest.mark.parametrize("amount", [12.5, 150.0, 0.0])
def test_float_money_fails_with_the_float_message(amount: float) -> None:
    body = {**VALID["sale"], "payments": [{"method": "cash", "amount": amount}]}
    (v,) = problems("sale", body)
    assert v == Violation(
        "body.payments[0].amount",
        f"{amount!r} is a float; money is an integer number of minor units (e.g. 1250 for 12.50)",
    )


@pytest.mark.parametrize("amount", [True, False, "300", None])
def test_non_integer_money_fails(amount: object) -> None:
    (v,) = problems("shift_open", {**VALID["shift_open"], "opening_cash": amount})
    assert v.path == "body.opening_cash"
    assert "money is an integer number of minor units" in v.message


def test_negative_price_fails() -> None:
    (v,) = record_problems("products", {**VALID_RECORDS["products"], "price": -1})
    assert v.path == "record.price"
    assert "negative" in v.message


def test_positive_money_fields_reject_zero() -> None:
    (v,) = problems("cash_movement", {**VALID["cash_movement"], "amount": 0})
    assert v.path == "body.amount"


def test_zero_money_is_allowed_where_money_may_be_zero() -> None:
    validate_entry("sale", sale_with(unit_price=0, discount=0))
    validate_record("products", {**VALID_RECORDS["products"], "price": 0})


# ----------------------------------------------------------------- error reporting


def test_unknown_kind_lists_known_kinds() -> None:
    with pytest.raises(UnknownKind) as info:
        validate_entry("salee", {})
    text = str(info.value)
    assert "'salee'" in text
    for kind in ENTRY_KINDS:
        assert kind in text
    with pytest.raises(UnknownKind):
        entry_schema("salee")


def test_unknown_collection_lists_known_collections() -> None:
    with pytest.raises(UnknownCollection) as info:
        validate_record("product", {})
    assert "products" in str(info.value) and "cashiers" in str(info.value)
    with pytest.raises(UnknownCollection):
        record_schema("product")
    assert issubclass(UnknownKind, ValueError) and issubclass(UnknownCollection, ValueError)


def test_every_violation_is_reported_with_its_path_sorted() -> None:
    body = {
        "lines": [
            {"product_id": "p1", "qty": "0,75", "unit_price": 100},
            {"product_id": "", "qty": 1, "unit_price": -5, "colour": "red"},
        ],
        "payments": [{"method": "cash", "amount": 12.5}],
        "customer_id": 42,
    }
    with pytest.raises(SchemaViolation) as info:
        validate_entry("sale", body)
    err = info.value
    assert err.what == "sale body"
    assert [v.path for v in err.violations] == [
        "body.customer_id",
        "body.lines[0].qty",
        "body.lines[1].colour",
        "body.lines[1].product_id",
        "body.lines[1].unit_price",
        "body.payments[0].amount",
        "body.shift_client_id",
    ]
    text = str(err)
    assert text.startswith("sale body is invalid (7 problems):\n  body.customer_id: ")
    assert (
        "\n  body.lines[0].qty: '0,75' is not a positive exact quantity "
        '(integer >= 1 or decimal string > 0 such as "0.75")'
    ) in text
    assert (
        "\n  body.payments[0].amount: 12.5 is a float; money is an integer number of minor "
        "units (e.g. 1250 for 12.50)"
    ) in text
    assert "\n  body.shift_client_id: required field is missing" in text


def test_paths_order_indexes_numerically() -> None:
    lines = [dict(LINE) for _ in range(12)]
    lines[2]["qty"] = 0
    lines[10]["qty"] = 0
    vs = problems("sale", {**VALID["sale"], "lines": lines})
    assert [v.path for v in vs] == ["body.lines[2].qty", "body.lines[10].qty"]


def test_single_problem_says_problem() -> None:
    with pytest.raises(SchemaViolation) as info:
        validate_entry("attendance", {"cashier_id": "c1"})
    assert str(info.value) == (
        "attendance body is invalid (1 problem):\n  body.action: required field is missing"
    )


def test_each_missing_required_field_is_named() -> None:
    vs = problems("cash_movement", {})
    assert vs == tuple(
        Violation(f"body.{f}", "required field is missing")
        for f in sorted(["direction", "amount", "reason", "shift_client_id"])
    )


def test_additional_property_is_named() -> None:
    (v,) = problems("shift_open", {**VALID["shift_open"], "drawer": 3})
    assert v.path == "body.drawer"
    assert "unexpected field 'drawer'" in v.message
    assert "cashier_id, opening_cash, register" in v.message


def test_additional_properties_in_nested_objects_are_named() -> None:
    vs = problems("sale", sale_with(price=1, tax=2))
    assert [(v.path, v.message.split(";")[0]) for v in vs] == [
        ("body.lines[0].price", "unexpected field 'price'"),
        ("body.lines[0].tax", "unexpected field 'tax'"),
    ]


def test_record_errors_name_the_record() -> None:
    with pytest.raises(SchemaViolation) as info:
        validate_record("products", {"name": "x", "sku": "y", "price": 1.5}, "p1")
    assert info.value.what == "products record 'p1'"
    assert str(info.value).startswith("products record 'p1' is invalid (1 problem):\n")
    assert info.value.violations[0].path == "record.price"


def test_settings_tax_rates_paths_quote_odd_keys() -> None:
    (v,) = record_problems("settings", {"tax_rates": {"VAT std": "20%"}})
    assert v.path == 'record.tax_rates["VAT std"]'
    assert "tax rate" in v.message


def test_customer_payment_cannot_use_account() -> None:
    (v,) = problems("customer_payment", {**VALID["customer_payment"], "method": "account"})
    assert v.path == "body.method"
    assert "account" in v.message


def test_dates_are_checked_for_shape_and_calendar() -> None:
    (v,) = problems("leave_request", {**VALID["leave_request"], "end_date": "2024/07/14"})
    assert v == Violation("body.end_date", "'2024/07/14' is not a date in YYYY-MM-DD form")
    (v,) = problems("leave_request", {**VALID["leave_request"], "start_date": "2023-02-29"})
    assert v.path == "body.start_date" and "calendar" in v.message


def test_ids_and_uuids() -> None:
    validate_entry("attendance", {"cashier_id": "store-1:till.2_x", "action": "break_end"})
    (v,) = problems("attendance", {"cashier_id": "-bad", "action": "clock_out"})
    assert v.path == "body.cashier_id"
    (v,) = problems("attendance", {"cashier_id": "a" * 65, "action": "clock_out"})
    assert v.path == "body.cashier_id"
    (v,) = problems("shift_close", {"open_shift_client_id": SHIFT.upper(), "closing_cash": 0})
    assert v.path == "body.open_shift_client_id" and "UUID" in v.message


def test_schema_violation_pickles() -> None:
    with pytest.raises(SchemaViolation) as info:
        validate_entry("attendance", {})
    clone = pickle.loads(pickle.dumps(info.value))
    assert isinstance(clone, SchemaViolation)
    assert clone.violations == info.value.violations and str(clone) == str(info.value)


# ----------------------------------------------------------------- properties


def _common_validator(definition: str) -> Draft202012Validator:
    """A stock jsonschema validator of one common.json definition, as another client
    holding only the schema files would build it."""
    common = json.loads((files("tillsync.schemas") / "common.json").read_text(encoding="utf-8"))
    registry: Registry[Any] = Registry().with_resource(
        common["$id"], Resource.from_contents(common)
    )
    return Draft202012Validator({"$ref": f"{common['$id']}#/$defs/{definition}"}, registry=registry)


_COMMON_QUANTITY = _common_validator("quantity")


@pytest.mark.parametrize("value", ["0.75", "-0.75", "0", "12", 3, -3, "1.000000"])
def test_common_quantity_accepts_exact_values(value: object) -> None:
    assert not list(_COMMON_QUANTITY.iter_errors(value))


@pytest.mark.parametrize("value", ["0,75", ".5", "1.", "1e3", "1.1234567", "+1", "", " 1"])
def test_common_quantity_rejects_inexact_values(value: object) -> None:
    assert list(_COMMON_QUANTITY.iter_errors(value))


@given(
    st.integers(min_value=0, max_value=6).flatmap(
        lambda places: st.decimals(min_value=-QUANTITY_LIMIT + 1, max_value=QUANTITY_LIMIT - 1,
                                   allow_nan=False, allow_infinity=False, places=places)
    )
)
def test_any_decimal_string_with_at_most_six_places_is_a_quantity(value: Decimal) -> None:
    """Within the range: below one billion units in size."""
    text = format(value, "f")
    assert not list(_COMMON_QUANTITY.iter_errors(text))
    assert not list(_COMMON_QUANTITY.iter_errors(int(value) if value == int(value) else text))
    if value != 0:
        validate_entry("stock_move", {**VALID["stock_move"], "direction": "adjust", "qty": text})
    if value >= 0:
        validate_record("products", {**VALID_RECORDS["products"], "reorder_level": text})
    if value > 0:
        validate_entry("sale", sale_with(qty=text))


@pytest.mark.parametrize("value", [str(QUANTITY_LIMIT), f"-{QUANTITY_LIMIT}.5", QUANTITY_LIMIT,
                                   -QUANTITY_LIMIT, "1" * 20, 2**64 - 1])
def test_a_quantity_of_a_billion_or_more_is_refused(value: object) -> None:
    assert list(_COMMON_QUANTITY.iter_errors(value))
    (v,) = problems("sale", sale_with(qty=value))
    assert v.path == "body.lines[0].qty"


@pytest.mark.parametrize(("kind", "field"), [("shift_open", "opening_cash"),
                                              ("cash_movement", "amount"),
                                              ("shift_close", "closing_cash")])
@pytest.mark.parametrize("value", [INTEGER_MAX + 1, 2**63 - 1, 2**64 - 1])
def test_money_beyond_the_range_is_refused(kind: str, field: str, value: int) -> None:
    (v,) = problems(kind, {**VALID[kind], field: value})
    assert v.path == f"body.{field}" and "too large" in v.message
    validate_entry(kind, {**VALID[kind], field: INTEGER_MAX})


def test_every_integer_of_every_schema_is_bounded_by_the_range() -> None:
    """One range: every integer a schema allows lies within -INTEGER_MAX .. INTEGER_MAX."""
    common = json.loads((files("tillsync.schemas") / "common.json").read_text(encoding="utf-8"))
    found = 0

    def walk(node: object) -> None:
        nonlocal found
        if isinstance(node, dict):
            if node.get("type") == "integer":
                found += 1
                assert -INTEGER_MAX <= node.get("minimum", -2**64) <= INTEGER_MAX, node
                assert -INTEGER_MAX <= node.get("maximum", 2**64) <= INTEGER_MAX, node
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(common)
    for kind in ENTRY_KINDS:
        walk(entry_schema(kind))
    for collection in COLLECTIONS:
        walk(record_schema(collection))
    assert INTEGER_MAX == 2**53 - 1 and found >= 7


@given(st.floats())
def test_any_float_is_rejected_as_money(value: float) -> None:
    (v,) = problems("shift_open", {**VALID["shift_open"], "opening_cash": value})
    assert v.path == "body.opening_cash"
    assert "is a float; money is an integer number of minor units" in v.message


@given(st.floats())
def test_any_float_is_rejected_as_quantity(value: float) -> None:
    (v,) = problems("sale", sale_with(qty=value))
    assert "is a float" in v.message
