"""Parts of the till's HTTP API that need no daemon: who the token gate lets in, the
event bus's LAN peer events, and delta reads of deleted records."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import automerge.core as am
import pytest

from tillsync.peer.errors import InvalidInput
from tillsync.peer.http import auth, delta
from tillsync.peer.http.events import QUEUE, EventBus
from tillsync.peer.master.written import Written
from tillsync.peer.store import Till
from tillsync.schemas import SchemaViolation


def test_the_owner_token_opens_loopback_only_and_issued_tokens_until_revoked(
        tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    gate = auth.Gate(tmp_path)
    owner = auth.owner_token(tmp_path)
    assert gate.who(owner, "127.0.0.1") == "owner"
    assert gate.who(owner, "::1") == "owner"
    assert gate.who(owner, "192.168.1.20") is None  # the owner's token stays on this machine
    assert gate.who(owner, None) is None
    issued = auth.issue(tmp_path, "handheld")
    assert gate.who(issued, "192.168.1.20") == "handheld"
    assert gate.who("x" + issued, "192.168.1.20") is None
    assert "sha256" in auth.issued(tmp_path)["handheld"]
    assert issued not in (tmp_path / auth.ISSUED_FILE).read_text()  # kept as a digest
    auth.revoke(tmp_path, "handheld")
    assert gate.who(issued, "127.0.0.1") is None
    assert (tmp_path / auth.ISSUED_FILE).stat().st_mode & 0o077 == 0


@dataclass
class Info:
    name: str
    address: str
    connected: bool
    since: float = 1.0


def test_the_bus_says_when_a_peer_joins_and_leaves_and_cuts_off_a_slow_reader() -> None:
    bus = EventBus()
    queue = bus.subscribe()
    bus.peers_seen({"d1": Info("Till 1", "10.0.0.1:8766", True)})
    bus.peers_seen({"d1": Info("Till 1", "10.0.0.1:8766", True)})  # no change, no event
    bus.peers_seen({"d1": Info("Till 1", "10.0.0.1:8766", False)})
    bus.peers_seen({"d2": Info("Till 2", "10.0.0.2:8766", True)})
    # A link made and lost between two looks (a newer "since") is still both events.
    bus.peers_seen({"d2": Info("Till 2", "10.0.0.2:8766", False),
                    "d1": Info("Till 1", "10.0.0.1:8766", False, since=2.0)})
    seen = [queue.get_nowait() for _ in range(queue.qsize())]
    assert [(k, d["device_id"], d["connected"]) for k, d in seen] == [
        ("peer", "d1", True), ("peer", "d1", False), ("peer", "d2", True),
        ("peer", "d2", False), ("peer", "d1", True), ("peer", "d1", False)]
    for i in range(QUEUE + 1):
        bus.publish("entry", {"n": i})
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    assert items[-1] is None  # the stream is told to end; the reader reconnects
    bus.publish("entry", {"n": -1})
    assert queue.empty()


def delete_elsewhere(till: Till, collection: str, record_id: str) -> None:
    """A record removed as a merge removes it: an Automerge delete made outside
    ``MasterData.put`` and ``delete``."""
    doc = till.master._doc
    found = doc.get(am.ROOT, collection)
    assert found is not None
    with doc.transaction() as tx:
        tx.delete(found[1], record_id)
    till.master._cache.clear()


async def test_a_delta_read_lists_a_record_deleted_since_the_cursor(tmp_path: Path) -> None:
    await Till.init(tmp_path / "t", name="T1")
    async with await Till.open(tmp_path / "t") as till:
        await till.put("products", "a", {"name": "A", "sku": "a", "price": 1})
        await till.put("products", "b", {"name": "B", "sku": "b", "price": 2})
        cursor = delta.read(till, "products", None)["sync_cursor"]
        delete_elsewhere(till, "products", "a")
        await till.put("products", "b", {"price": 3})
        answer = delta.read(till, "products", cursor)
        assert answer["deleted_ids"] == ["a"] and list(answer["records"]) == ["b"]
        assert answer["records"]["b"]["price"] == 3
        assert delta.read(till, "customers", cursor)["records"] == {}


async def test_an_integer_too_big_to_store_is_bad_input_naming_its_path(tmp_path: Path) -> None:
    await Till.init(tmp_path / "t", name="T1")
    async with await Till.open(tmp_path / "t") as till:
        await till.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})
        # The schema's range refuses it first now; either way bad input, naming the path.
        with pytest.raises((InvalidInput, SchemaViolation), match=r"body\.opening_cash"):
            await till.record("shift_open", {"cashier_id": "ann", "opening_cash": 10**30})
        assert await till.entries() == []


async def test_a_put_with_an_integer_too_big_is_refused_alone_not_with_its_batch(
        tmp_path: Path) -> None:
    await Till.init(tmp_path / "t", name="T1")
    async with await Till.open(tmp_path / "t") as till:
        good = till.put("products", "a", {"name": "A", "sku": "a", "price": 1})
        bad = till.put("products", "b", {"name": "B", "sku": "b", "price": 10**30})
        results = await asyncio.gather(good, bad, return_exceptions=True)
        assert results[0] == till.get("products", "a")
        assert isinstance(results[1], InvalidInput | SchemaViolation), results[1]
        assert "price" in str(results[1])
        assert till.get("products", "b") is None


async def test_a_delta_read_from_the_history_equals_one_from_a_diff(tmp_path: Path) -> None:
    await Till.init(tmp_path / "t", name="T1")
    async with await Till.open(tmp_path / "t") as till:
        history = delta.History()
        start = till.master.heads()
        edits = [("products", "a", {"name": "A", "sku": "a", "price": 1}),
                 ("customers", "c", {"name": "C"}),
                 ("products", "b", {"name": "B", "sku": "b", "price": 2}),
                 ("products", "a", {"price": 5})]
        cursors = [delta.cursor_of(start)]
        for collection, record_id, body in edits:
            before = till.master.heads()
            await till.put(collection, record_id, body)
            history.add(before, till.master.heads(), delta.changes_all(till, before))
            cursors.append(delta.cursor_of(till.master.heads()))
        for cursor in cursors:
            for collection in ("products", "customers"):
                assert delta.read(till, collection, cursor, history) == \
                    delta.read(till, collection, cursor)
        assert set(delta.read(till, "products", cursors[1], history)["records"]) == {"a", "b"}
        assert history.since("products", [b"\0" * 32], till.master.heads()) is None


async def test_the_deltas_of_this_tills_own_writes_equal_the_diffs(tmp_path: Path) -> None:
    """Local puts and deletes are looked up (``peer.master.written``), not diffed; a
    change from elsewhere among them sends the read through the diff."""
    await Till.init(tmp_path / "t", name="T1")
    async with await Till.open(tmp_path / "t") as till:
        start = till.master.heads()
        await till.put("products", "a", {"name": "A", "sku": "a", "price": 1})
        await till.put("customers", "c", {"name": "C"})
        middle = till.master.heads()
        await till.put("products", "b", {"name": "B", "sku": "b", "price": 2})
        await till.delete("products", "a")
        await till.put("products", "b", {"price": 5})
        looked_up = {str(h): delta.changes_all(till, h) for h in (start, middle)}
        reads = {str(h): delta.read(till, "products", delta.cursor_of(h)) for h in (start, middle)}
        assert looked_up[str(middle)]["products"] == delta.Delta(changed={"b"}, deleted={"a"})
        assert set(looked_up[str(start)]) == {"products", "customers"}
        till.master.written = Written()  # through Automerge's diff from here on
        for heads in (start, middle):
            diffed = delta.read(till, "products", delta.cursor_of(heads))
            assert reads[str(heads)]["records"] == diffed["records"]
            extra = set(reads[str(heads)]["deleted_ids"]) - set(diffed["deleted_ids"])
            assert set(diffed["deleted_ids"]) <= set(reads[str(heads)]["deleted_ids"])
            # The lookup also names a record created and deleted since the cursor.
            assert extra == ({"a"} if heads == start else set())
        # A change made outside put/delete (as a merge brings one) is not looked up.
        await till.put("products", "d", {"name": "D", "sku": "d", "price": 4})
        before_merge = till.master.heads()
        delete_elsewhere(till, "customers", "c")
        changes = till.master._doc.get_changes(before_merge)
        assert till.master.written.records(c.hash for c in changes) is None
        assert delta.changes_all(till, before_merge) == \
            {"customers": delta.Delta(deleted={"c"})}
