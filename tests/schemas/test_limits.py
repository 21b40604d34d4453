"""Every string of the entry and master schemas is bounded, and a string beyond its
bound is refused with a short message."""

from __future__ import annotations

from typing import Any

import pytest

from tillsync.schemas import COLLECTIONS, ENTRY_KINDS, SchemaViolation, validate_entry
from tillsync.schemas.validate import _load, _root


def _unbounded(node: Any, path: str) -> list[str]:
    out = []
    if isinstance(node, dict):
        kind = node.get("type")
        if (kind == "string" or isinstance(kind, list) and "string" in kind) \
                and not isinstance(node.get("maxLength"), int):
            out.append(path)
        for key, value in node.items():
            out.extend(_unbounded(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(_unbounded(value, f"{path}/{i}"))
    return out


@pytest.mark.parametrize("name", ["common.json", *(f"entries/{k}.json" for k in ENTRY_KINDS),
                                  *(f"master/{c}.json" for c in COLLECTIONS)])
def test_every_string_has_a_max_length(name: str) -> None:
    folder, _, file = name.rpartition("/")
    path = (_root() / folder / file) if folder else (_root() / file)
    assert _unbounded(_load(path), name) == []


def test_a_string_beyond_its_bound_is_refused_with_a_short_message() -> None:
    body = {"cashier_id": "ann", "opening_cash": 0, "register": "r" * 100_000}
    with pytest.raises(SchemaViolation) as caught:
        validate_entry("shift_open", body)
    message = str(caught.value)
    assert "body.register" in message and "100000 characters, at most 64" in message
    assert len(message) < 200
