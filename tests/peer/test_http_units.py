"""Parts of the till's HTTP API that need no daemon: who the token gate lets in, the
event bus's LAN peer events, and delta reads of deleted records."""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import automerge.core as am
import pytest

from tillsync.peer.errors import InvalidInput
from tillsync.peer.http import auth, delta
from tillsync.peer.http.events import QUEUE, EventBus
from tillsync.peer.master import changes
from tillsync.peer.master.document import COLLECTIONS, MasterData
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


async def test_a_delta_read_lists_a_record_deleted_since_the_cursor(tmp_path: Path) -> None:
    await Till.init(tmp_path / "t", name="T1")
    async with await Till.open(tmp_path / "t") as till:
        await till.put("products", "a", {"name": "A", "sku": "a", "price": 1})
        await till.put("products", "b", {"name": "B", "sku": "b", "price": 2})
        cursor = delta.read(till, "products", None)["sync_cursor"]
        # Till has no delete; a record removed elsewhere arrives as an Automerge delete.
        doc = till.master._doc
        products = doc.get(am.ROOT, "products")
        assert products is not None
        with doc.transaction() as tx:
            tx.delete(products[1], "a")
        till.master._cache.clear()
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


async def test_a_delta_read_from_the_changes_equals_one_from_a_diff(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Changed and deleted ids read from the changes' operations, for cursors before and
    after every step, are what a whole-document diff finds: edits here, removed fields,
    the settings' nested rates, and changes from another device merged in (a creation,
    an edit, a record removed, the same record created on both sides)."""
    await Till.init(tmp_path / "t", name="T1")
    elsewhere = MasterData.new(uuid.uuid4().bytes)
    async with await Till.open(tmp_path / "t") as till:
        cursors = [delta.cursor_of(till.master.heads())]

        async def merge() -> None:
            await till.receive_document(None, None, elsewhere.save())

        steps: list[Any] = [
            lambda: till.put("products", "a", {"name": "A", "sku": "a", "price": 1}),
            lambda: till.put("customers", "c", {"name": "C", "phone": "1"}),
            lambda: till.put("settings", "store", {"currency": "EUR",
                                                   "tax_rates": {"std": "21"}}),
            lambda: till.put("products", "b", {"name": "B", "sku": "b", "price": 2}),
            lambda: till.put("products", "a", {"price": 5}),
            lambda: till.put("customers", "c", {"phone": None}),
            lambda: till.put("settings", "store", {"tax_rates": {"std": "22", "low": "5"}}),
        ]
        for step in steps:
            await step()
            cursors.append(delta.cursor_of(till.master.heads()))
        till.master.warm()  # merges below refresh what they touch in memory
        elsewhere.apply(till.master.save())
        elsewhere.put("products", "x", {"name": "X", "sku": "x", "price": 9})
        elsewhere.put("products", "b", {"name": "Bee"})
        elsewhere.put("suppliers", "s", {"name": "S"})
        await till.put("suppliers", "s", {"name": "S here"})  # the same id on both sides
        cursors.append(delta.cursor_of(till.master.heads()))
        doc = elsewhere._doc
        products = doc.get(am.ROOT, "products")
        assert products is not None
        with doc.transaction() as tx:
            tx.delete(products[1], "a")
        await merge()
        cursors.append(delta.cursor_of(till.master.heads()))
        await till.put("products", "b", {"price": 3})
        cursors.append(delta.cursor_of(till.master.heads()))
        assert till.get("products", "a") is None and till.get("products", "x") is not None

        decoded = {c: {name: delta.read(till, name, c) for name in COLLECTIONS}
                   for c in cursors}
        monkeypatch.setattr(changes, "DECODE_LIMIT", 0)  # every read a whole diff
        diffed = {c: {name: delta.read(till, name, c) for name in COLLECTIONS}
                  for c in cursors}
        # Everything the diff finds, and nothing stale: a record created and removed
        # since the cursor may come as a deleted id too (harmless to a reader).
        for cursor in cursors:
            for name in COLLECTIONS:
                mine, theirs = decoded[cursor][name], diffed[cursor][name]
                assert mine["records"] == theirs["records"], (cursor, name)
                assert set(theirs["deleted_ids"]) <= set(mine["deleted_ids"])
                assert all(till.get(name, i) is None for i in mine["deleted_ids"])
        assert decoded[cursors[1]]["products"]["deleted_ids"] == ["a"]
        assert set(decoded[cursors[-2]]["products"]["records"]) == {"b"}
        assert set(decoded[cursors[6]]["settings"]["records"]) == {"store"}
        assert set(decoded[cursors[5]]["customers"]["records"]) == {"c"}
        fresh = MasterData.load(till.master.save(), uuid.uuid4().bytes)
        for name in COLLECTIONS:
            assert till.master.all(name) == fresh.all(name), name


async def test_an_unexpected_failure_is_a_500_in_the_shape_the_document_declares(
        tmp_path: Path) -> None:
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer
    from jsonschema import Draft202012Validator

    from tillsync.peer.http import app, openapi
    from tillsync.peer.http.context import ApiContext

    async def broken_round(rewind: bool) -> dict[str, object]:
        raise RuntimeError("a bug, not a refusal")

    await Till.init(tmp_path / "t", name="T1")
    async with await Till.open(tmp_path / "t") as till:
        ctx = ApiContext(till=till, events=EventBus(), daemon_status=dict,
                         sync_round=broken_round)
        server = TestServer(app.build(ctx, auth.Gate(till.path)), host="127.0.0.1")
        await server.start_server()
        try:
            headers = {"Authorization": f"Bearer {auth.owner_token(till.path)}"}
            async with ClientSession() as session, session.post(
                    str(server.make_url("/api/sync/push")), headers=headers) as answer:
                status, body = answer.status, await answer.json()
        finally:
            await server.close()
    assert status == 500 and body["error"]["code"] == "internal"
    declared = openapi.PATHS["/api/sync/push"]["post"]["responses"]["500"]
    schema = {**declared["content"]["application/json"]["schema"],
              "components": openapi.DOCUMENT["components"]}
    assert not list(Draft202012Validator(schema).iter_errors(body))
    assert "a bug" not in str(body)  # no internals in the answer


async def test_a_large_full_read_is_gzipped_for_a_client_that_accepts_it(
        tmp_path: Path) -> None:
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from tillsync.peer.http import app
    from tillsync.peer.http.context import ApiContext

    async def no_round(rewind: bool) -> dict[str, object]:
        return {}

    await Till.init(tmp_path / "t", name="T1")
    async with await Till.open(tmp_path / "t") as till:
        await asyncio.gather(*(till.put("products", f"p{i:04d}", {
            "name": f"Product {i}", "sku": f"S{i}", "price": i}) for i in range(1000)))
        await till.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})
        ctx = ApiContext(till=till, events=EventBus(), daemon_status=dict,
                         sync_round=no_round)
        server = TestServer(app.build(ctx, auth.Gate(till.path)), host="127.0.0.1")
        await server.start_server()
        answers = []
        try:
            headers = {"Authorization": f"Bearer {auth.owner_token(till.path)}"}
            async with ClientSession(headers=headers, auto_decompress=False) as session:
                for route, encoding in (("products", "gzip"), ("products", "identity"),
                                        ("cashiers", "gzip")):
                    async with session.get(str(server.make_url(f"/api/master/{route}")),
                                           headers={"Accept-Encoding": encoding}) as r:
                        answers.append((r.headers.get("Content-Encoding"), await r.read()))
        finally:
            await server.close()
        (zipped, raw_zipped), (plain, raw_plain), (small, raw_small) = answers
        assert zipped == "gzip" and plain is None and small is None  # cashiers: small
        assert len(raw_zipped) < len(raw_plain) / 3
        assert json.loads(gzip.decompress(raw_zipped)) == json.loads(raw_plain)
        assert json.loads(raw_plain)["records"] == till.all("products")
        assert json.loads(raw_small)["records"] == till.all("cashiers")
        assert "pin_hash" not in raw_small.decode()
