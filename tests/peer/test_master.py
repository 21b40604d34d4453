"""The master-data document: edits, validation, PINs, merging, persistence."""

from __future__ import annotations

import uuid

import automerge.core as am
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tillsync.peer.errors import InvalidInput
from tillsync.peer.master import MasterData, check_pin
from tillsync.schemas import SchemaViolation

A, B = uuid.uuid4().bytes, uuid.uuid4().bytes


def test_put_merges_fields_and_fills_defaults() -> None:
    doc = MasterData.new(A)
    doc.put("products", "p1", {"name": "Bread", "sku": "B1", "price": 320})
    doc.put("products", "p1", {"price": 340, "category": "bakery"})
    assert doc.get("products", "p1") == {"name": "Bread", "sku": "B1", "price": 340,
                                         "category": "bakery", "volatile": False,
                                         "active": True}
    doc.put("products", "p1", {"category": None})
    assert "category" not in (doc.get("products", "p1") or {})


def test_an_unchanged_put_makes_no_change() -> None:
    doc = MasterData.new(A)
    doc.put("products", "p1", {"name": "Bread", "sku": "B1", "price": 320})
    assert doc.put("products", "p1", {"price": 320}) == []


@pytest.mark.parametrize(
    ("collection", "body", "message"),
    [
        ("products", {"name": "Bread", "sku": "B1", "price": -5}, "record.price"),
        ("products", {"name": "Bread", "sku": "B1", "price": 3.2}, "float"),
        ("products", {"name": "Bread", "price": 3}, "record.sku"),
        ("products", {"name": "Bread", "sku": "B1", "price": 3, "colour": "red"}, "colour"),
    ],
)
def test_bad_records_are_refused_and_nothing_changes(
    collection: str, body: dict[str, object], message: str
) -> None:
    doc = MasterData.new(A)
    heads = doc.heads()
    with pytest.raises(SchemaViolation, match=message):
        doc.put(collection, "p1", body)
    assert doc.heads() == heads and doc.get(collection, "p1") is None


def test_unknown_collection_and_settings_id() -> None:
    doc = MasterData.new(A)
    with pytest.raises(InvalidInput, match="unknown collection 'prodcts'"):
        doc.put("prodcts", "p1", {})
    with pytest.raises(InvalidInput, match="single record"):
        doc.put("settings", "other", {"store_name": "x"})
    doc.put("settings", "store", {"store_name": "Corner", "tax_rates": {"std": "20"}})
    assert doc.get("settings", "store") == {"store_name": "Corner", "tax_rates": {"std": "20"}}


def test_pin_is_stored_only_as_a_slow_salted_hash() -> None:
    doc = MasterData.new(A)
    doc.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})
    record = doc.get("cashiers", "ann")
    assert record is not None and "pin" not in record
    assert record["pin_hash"].startswith("scrypt$") and "1234" not in record["pin_hash"]
    assert check_pin("1234", record["pin_hash"]) and not check_pin("1235", record["pin_hash"])
    assert b"1234" not in doc.save()
    with pytest.raises(InvalidInput, match="needs a 'pin'"):
        doc.put("cashiers", "bob", {"name": "Bob", "role": "cashier"})
    with pytest.raises(InvalidInput, match="computed"):
        doc.put("cashiers", "ann", {"pin_hash": "x"})


def test_two_devices_initialised_apart_merge_field_by_field() -> None:
    a, b = MasterData.new(A), MasterData.new(B)
    a.put("products", "p1", {"name": "Bread", "sku": "B1", "price": 320})
    b.apply(a.save())
    a.put("products", "p1", {"price": 350})
    b.put("products", "p1", {"name": "Sourdough"})
    b.put("customers", "c1", {"name": "Cafe"})
    a.apply(b.save())
    b.apply(a.save())
    assert a.to_py() == b.to_py()
    assert a.get("products", "p1") == {"name": "Sourdough", "sku": "B1", "price": 350,
                                       "volatile": False, "active": True}
    assert a.get("customers", "c1") is not None


def test_snapshot_plus_change_chunks_load_to_the_same_document() -> None:
    doc = MasterData.new(A)
    snapshot = doc.save()
    chunks: list[bytes] = []
    for i in range(50):
        chunks += doc.put("products", f"p{i}", {"name": f"P{i}", "sku": f"S{i}", "price": i})
    loaded = MasterData.load(snapshot + b"".join(chunks), A)
    assert loaded.to_py() == doc.to_py() and loaded.heads() == doc.heads()


def test_cached_reads_follow_puts_and_merges_and_are_copies() -> None:
    a, b = MasterData.new(A), MasterData.new(B)
    a.put("products", "p1", {"name": "Bread", "sku": "B1", "price": 320})
    a.put("settings", "store", {"tax_rates": {"std": "20"}})
    assert a.all("products")["p1"]["price"] == 320  # fills the cache
    a.all("settings")["store"]["tax_rates"]["std"] = "99"  # callers get copies
    assert a.all("settings")["store"]["tax_rates"] == {"std": "20"}
    a.put("products", "p1", {"price": 330})
    a.put("products", "p2", {"name": "Milk", "sku": "M1", "price": 119})
    assert a.all("products")["p1"]["price"] == 330 and a.get("products", "p2") is not None
    b.apply(a.save())
    b.put("products", "p1", {"price": 340})
    a.apply(b.save())
    assert a.all("products")["p1"]["price"] == 340 and a.get("products", "p1") == b.get(
        "products", "p1")


def test_fields_reads_just_the_named_scalars_and_follows_merges() -> None:
    a, b = MasterData.new(A), MasterData.new(B)
    a.put("products", "p1", {"name": "Tomatoes", "sku": "T1", "price": 450, "volatile": True})
    assert a.fields("products", "p1", ("volatile", "reorder_level")) == {"volatile": True}
    assert a.fields("products", "nope", ("volatile",)) is None
    b.apply(a.save())
    b.put("products", "p1", {"volatile": False, "reorder_level": "2.5"})
    a.apply(b.save())
    assert a.fields("products", "p1", ("volatile", "reorder_level")) == {
        "volatile": False, "reorder_level": "2.5"}


# -- the plain-Python copies, kept in step with changes merged from elsewhere ------------

_IDS = st.sampled_from(["p1", "p2", 'q"uote', "back\\slash", "naïve", "p3"])
_EDITS = st.lists(st.tuples(st.integers(0, 2), _IDS, st.integers(1, 999),
                            st.sampled_from(["price", "name", "category", "drop category"])),
                  min_size=1, max_size=15)


@given(_EDITS)
def test_the_copies_read_by_all_stay_in_step_with_merged_changes(
    steps: list[tuple[int, str, int, str]],
) -> None:
    """After every message merged, ``all`` (kept by touching only the records the
    changes touched) reads exactly what a fresh load of the same document reads."""
    base = MasterData.new(uuid.uuid4().bytes)
    docs = [MasterData.load(base.save(), uuid.uuid4().bytes) for _ in range(3)]
    states = {(i, j): am.SyncState() for i in range(3) for j in range(3) if i != j}
    for doc in docs:
        doc.all("products")  # copies made before any change arrives
    for who, record_id, number, what in steps:
        doc = docs[who]
        if not doc.has("products", record_id):
            doc.put("products", record_id, {"name": "P", "sku": "S", "price": number})
        elif what == "drop category":
            doc.put("products", record_id, {"category": None})
        else:
            doc.put("products", record_id,
                    {what: number if what == "price" else f"{what} {number}"})
        for (i, j), state in states.items():
            message = docs[i].sync_message(state)
            if message is not None:
                docs[j].receive_sync(states[(j, i)], message)
                fresh = MasterData.load(docs[j].save(), uuid.uuid4().bytes)
                assert docs[j].all("products") == fresh.all("products")
                for record_id_ in fresh.ids("products"):
                    assert docs[j].get("products", record_id_) == \
                        fresh.get("products", record_id_)


def test_copies_stay_in_step_when_a_snapshot_is_merged() -> None:
    a, b = MasterData.new(A), MasterData.new(B)
    b.put("products", "p1", {"name": "P", "sku": "S", "price": 1})
    assert b.all("products")
    a.put("products", "p1", {"name": "Q", "sku": "S", "price": 2})
    a.put("products", "p2", {"name": "R", "sku": "S", "price": 3})
    b.apply(a.save())
    assert b.all("products") == MasterData.load(b.save(), A).all("products")


def test_an_empty_document_becomes_the_snapshot_it_is_given() -> None:
    office = MasterData.new(A)
    for i in range(30):
        office.put("products", f"p{i}", {"name": f"P{i}", "sku": f"S{i}", "price": i})
    snapshot = office.save()
    till = MasterData.new(B)
    genesis_bytes = till.save()
    chunks = till.apply(snapshot)
    assert chunks == [snapshot]  # one chunk to persist, not one per change
    assert till.to_py() == office.to_py() and till.heads() == office.heads()
    assert till.save() == snapshot  # no second save of what was just loaded
    # What the till persists (its genesis snapshot, then that chunk) loads back the same.
    again = MasterData.load(genesis_bytes + b"".join(chunks), B)
    assert again.to_py() == office.to_py()
    # Its own edits are made as its own actor, and merge back into the office's copy.
    till.put("customers", "c1", {"name": "Cafe"})
    office.apply(till.save())
    assert office.get("customers", "c1") is not None and office.to_py() == till.to_py()
    # A document that already holds more merges as before: only the new changes.
    assert office.apply(snapshot) == []


def test_an_empty_document_refuses_a_snapshot_of_another_kind() -> None:
    other = am.Document(actor_id=A)
    with other.transaction() as tx:
        for name in ("cashiers", "customers", "products", "settings", "suppliers"):
            tx.put_object(am.ROOT, name, am.ObjType.Map)  # not the shared genesis change
    till = MasterData.new(B)
    with pytest.raises(InvalidInput, match="genesis"):
        till.apply(other.save())
    assert till.is_genesis()
