"""Reading which records Automerge changes touch from the changes' own bytes
(``peer.master.changes``): both chunk encodings, other actors' changes, and bytes that
are not a change."""

from __future__ import annotations

import uuid

import pytest

from tillsync.peer.master.changes import Undecodable, operations
from tillsync.peer.master.document import MasterData


def test_a_compressed_change_reads_as_its_plain_form() -> None:
    master = MasterData.new(uuid.uuid4().bytes)
    before = master.heads()
    master.put("products", "p" * 50, {"name": "N" * 190, "sku": "S" * 60, "price": 1,
                                      "barcode": "1" * 60, "category": "c" * 100})
    (change,) = master._doc.get_changes(before)
    assert change.bytes[8] == 2 and change.raw_bytes[8] == 1  # deflated, and not
    ops = operations(change.bytes)
    assert ops == operations(change.raw_bytes)
    assert [(op.key, op.action) for op in ops[:2]] == [("p" * 50, 0), ("volatile", 1)]
    assert {op.obj for op in ops[1:]} == {ops[0].id}  # the fields go in the new record


def test_records_changed_by_another_device_and_by_several_changes() -> None:
    here, there = MasterData.new(uuid.uuid4().bytes), MasterData.new(uuid.uuid4().bytes)
    here.put("products", "a", {"name": "A", "sku": "a", "price": 1})
    here.put("customers", "c", {"name": "C"})
    there.apply(here.save())
    before = here.heads()
    there.put("products", "a", {"price": 2})
    there.put("products", "b", {"name": "B", "sku": "b", "price": 3})
    there.put("customers", "c", {"phone": "123"})
    here.apply(there.save())
    found = here.records_changed(here._doc.get_changes(before))
    assert found is not None
    assert (found["products"].changed, found["customers"].changed) == ({"a", "b"}, {"c"})
    assert not found["products"].deleted and "cashiers" not in found


def test_bytes_that_are_not_a_change_are_refused() -> None:
    master = MasterData.new(uuid.uuid4().bytes)
    before = master.heads()
    master.put("products", "a", {"name": "A", "sku": "a", "price": 1})
    (change,) = master._doc.get_changes(before)
    for bad in (b"", b"nothing", change.raw_bytes[:20], change.raw_bytes[:9] + b"\xff" * 30):
        with pytest.raises(Undecodable):
            operations(bad)
