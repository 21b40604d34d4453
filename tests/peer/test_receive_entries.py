"""``Till.receive_entries`` and ``Till.add_certs`` on real stores: what a LAN peer forwards.

The receiving till is enrolled the way ``peer init --relay`` leaves it (relay url and
key pinned, its own certificate kept); the other devices are played by the test with
keys, certificates signed by the same relay key (``Certificate.issue``) and chains built
by hand (``tests.relay.processes.Chain``).  Every refusal is checked against the whole
state: the store in memory and, reopened, on disk; then the good run is offered again
to show that the refusal left nothing behind that would block it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.doubles import sale
from tests.relay.processes import Chain
from tillsync.peer.cert import Certificate, Revocation
from tillsync.peer.errors import EntryRefused, Forbidden, StoreCorrupt
from tillsync.peer.identity import DeviceKey
from tillsync.peer.log import Entry
from tillsync.peer.storage import SCHEMA_VERSION
from tillsync.peer.store import Till

STORE = "shop-1"
RELAY_KEY, ROGUE_KEY = DeviceKey.generate(), DeviceKey.generate()
BREAD = {"name": "Bread", "sku": "B1", "price": 320}


@dataclass
class Device:
    """Another device of the store, played by the test."""

    id: str
    key: DeviceKey
    cert: bytes
    chain: Chain

    def moves(self, *qtys: int, direction: str = "in") -> list[Entry]:
        return [self.chain.next("stock_move", {"product_id": "bread", "direction": direction,
                                               "qty": str(q), "reason": "delivery"})
                for q in qtys]


def make_device(name: str = "Till 2", *, store: str = STORE, issuer: DeviceKey = RELAY_KEY,
                key: DeviceKey | None = None, device_id: str | None = None,
                role: str = "admin") -> Device:
    """A device of the store; admin by default, since these tills also keep the
    catalogue (a till-role device may not change prices: tests/relay/test_roles.py)."""
    key = key or DeviceKey.generate()
    device_id = device_id or str(uuid.uuid4())
    cert = Certificate.issue(issuer, store=store, device=device_id, name=name, role=role,
                             public_key=key.public_bytes).raw
    return Device(device_id, key, cert, Chain(key, device_id))


async def enrolled_till(path: Path, *, enrolled: bool = True) -> Till:
    """A till as ``peer init --relay`` leaves it, with bread in its master data."""
    me = make_device("Till 1")
    await Till.init(path, name="Till 1", store_id=STORE, key=me.key, device_id=me.id,
                    relay_url="ws://relay.invalid" if enrolled else None,
                    relay_key=RELAY_KEY.public_bytes if enrolled else None,
                    cert=me.cert if enrolled else None)
    till = await Till.open(path)
    await till.put("products", "bread", BREAD)
    return till


def bread(stock: list[dict[str, Any]]) -> str:
    return str(next(r["qty"] for r in stock if r["product_id"] == "bread"))


async def state_of(till: Till) -> dict[str, Any]:
    """Everything a refused batch must leave as it was."""
    return {"heads": till.heads(),
            "entries": sorted((e.device_id, e.seq, e.hash) for e in await till.entries()),
            "stock": await till.stock(), "views": await till.rebuild_views(),
            "certs": till.certs(), "counts": (await till.status())["entries"]}


async def on_disk(path: Path) -> dict[str, Any]:
    async with await Till.open(path, readonly=True) as reader:
        return await state_of(reader)


# -- a good run is stored and applied -------------------------------------------------


async def test_a_valid_run_of_another_device_is_stored_and_its_effects_applied(
    tmp_path: Path,
) -> None:
    till = await enrolled_till(tmp_path / "t")
    try:
        other = make_device()
        assert await till.add_certs([other.cert]) == []
        run = other.moves(5, 7) + other.moves(2, direction="out")
        assert await till.receive_entries(run) == 3

        assert till.heads()[other.id] == 3
        held = [e for e in await till.entries() if e.device_id == other.id]
        assert [(e.seq, e.hash, e.sig) for e in held] == [(e.seq, e.hash, e.sig) for e in run]
        assert bread(await till.stock()) == "10"
        status = await till.status()
        assert status["devices"][other.id] == {"name": "Till 2", "last_seq": 3}
        assert status["pending"] == 3  # forwarded entries await the relay like our own
        assert (await till.verify()).ok
        # The next run continues the chain held here.
        assert await till.receive_entries(other.moves(1)) == 1
        assert bread(await till.stock()) == "11"
        memory = await state_of(till)
    finally:
        await till.close()
    assert await on_disk(tmp_path / "t") == memory


async def test_one_batch_may_mix_devices_in_any_order(tmp_path: Path) -> None:
    async with await enrolled_till(tmp_path / "t") as till:
        x, y = make_device("Till 2"), make_device("Till 3")
        assert await till.add_certs([x.cert, y.cert]) == []
        xs, ys = x.moves(1, 2, 3), y.moves(10, 20)
        batch = [xs[2], ys[1], xs[0], ys[0], xs[1]]
        assert await till.receive_entries(batch) == 5
        assert till.heads() == {x.id: 3, y.id: 2}
        assert bread(await till.stock()) == "36"
        assert (await till.verify()).ok


async def test_entries_already_held_are_skipped(tmp_path: Path) -> None:
    async with await enrolled_till(tmp_path / "t") as till:
        other = make_device()
        await till.add_certs([other.cert])
        first = other.moves(1, 2, 3)
        assert await till.receive_entries(first) == 3
        assert await till.receive_entries(first) == 0
        more = other.moves(4, 5)
        assert await till.receive_entries(first + more) == 2  # only the new two
        assert await till.receive_entries(first[1:] + more) == 0
        assert till.heads()[other.id] == 5
        assert sum((await till.status())["entries"].values()) == 5
        assert bread(await till.stock()) == "15"  # nothing applied twice


async def test_a_run_starting_beyond_the_head_is_left_for_later(tmp_path: Path) -> None:
    async with await enrolled_till(tmp_path / "t") as till:
        other = make_device()
        await till.add_certs([other.cert])
        run = other.moves(1, 2, 3, 4)
        before = await state_of(till)
        assert await till.receive_entries(run[2:]) == 0  # seq 3.. with nothing held
        assert await state_of(till) == before
        assert await till.receive_entries(run[:2]) == 2
        assert await till.receive_entries(run[3:]) == 0  # seq 4 while the head is 2
        assert await till.receive_entries(run[2:]) == 2
        assert till.heads()[other.id] == 4
        assert bread(await till.stock()) == "10"


async def test_entries_claiming_this_tills_own_device_are_never_taken(tmp_path: Path) -> None:
    """The till is the authority on its own log: forwarded copies are ignored, and a
    forged continuation of it is not stored."""
    async with await enrolled_till(tmp_path / "t") as till:
        mine = await till.record("stock_move", {"product_id": "bread", "direction": "in",
                                                "qty": "1", "reason": "count"})
        forger = Chain(ROGUE_KEY, till.device_id, seq=1, prev=mine.hash)
        forged = forger.next("stock_move", {"product_id": "bread", "direction": "in",
                                            "qty": "99", "reason": "x"})
        before = await state_of(till)
        assert await till.receive_entries([mine, forged]) == 0
        assert await state_of(till) == before
        assert till.heads() == {till.device_id: 1}
        nxt = await till.record("stock_move", {"product_id": "bread", "direction": "in",
                                               "qty": "1", "reason": "count"})
        assert (nxt.seq, nxt.prev) == (2, mine.hash)
        assert (await till.verify()).ok


# -- a bad batch is refused whole ------------------------------------------------------


def _broken_chain(d: Device) -> list[Entry]:
    a = d.moves(1)
    b = d.chain.next("stock_move", {"product_id": "bread", "direction": "in", "qty": "2",
                                    "reason": "x"}, prev=bytes(32))  # prev is not a's hash
    return a + [b] + d.moves(3)  # signed by the device all along


def _bad_head_signature(d: Device) -> list[Entry]:
    return d.moves(1, 2) + [d.chain.next("stock_move", {"product_id": "bread",
                                                        "direction": "in", "qty": "3",
                                                        "reason": "x"}, key=ROGUE_KEY)]


def _tampered_body(d: Device) -> list[Entry]:
    run = d.moves(1, 2, 3)
    forged = msgpack.packb({"direction": "in", "product_id": "bread", "qty": "200",
                            "reason": "delivery"}, use_bin_type=True)
    return [run[0], dataclasses.replace(run[1], body_bytes=forged), run[2]]


def _tampered_head_body(d: Device) -> list[Entry]:
    run = d.moves(1, 2)
    forged = msgpack.packb({"direction": "in", "product_id": "bread", "qty": "200",
                            "reason": "delivery"}, use_bin_type=True)
    return [run[0], dataclasses.replace(run[1], body_bytes=forged)]


def _tampered_head_kind(d: Device) -> list[Entry]:
    run = d.moves(1, 2)
    return [run[0], dataclasses.replace(run[1], kind="expense")]


def _gap(d: Device) -> list[Entry]:
    run = d.moves(1, 2, 3, 4)
    return [run[0], run[1], run[3]]


def _repeated_seq(d: Device) -> list[Entry]:
    run = d.moves(1, 2)
    twin = Chain(d.key, d.id, seq=1, prev=run[0].hash).next(
        "stock_move", {"product_id": "bread", "direction": "in", "qty": "9", "reason": "x"})
    return run + [twin]


REFUSALS: list[tuple[str, Callable[[Device], list[Entry]]]] = [
    ("broken chain", _broken_chain),
    ("bad head signature", _bad_head_signature),
    ("tampered body", _tampered_body),
    ("tampered head body", _tampered_head_body),
    ("tampered head kind", _tampered_head_kind),
    ("gap inside the run", _gap),
    ("repeated seq", _repeated_seq),
    ("another key for the device", lambda d: [
        Chain(DeviceKey.generate(), d.id, seq=d.chain.seq, prev=d.chain.prev).next(
            "stock_move", {"product_id": "bread", "direction": "in", "qty": "1",
                           "reason": "x"})]),
]


@pytest.mark.parametrize("forge", [f for _, f in REFUSALS], ids=[n for n, _ in REFUSALS])
async def test_a_forged_run_is_refused_whole_and_nothing_changes(
    tmp_path: Path, forge: Callable[[Device], list[Entry]],
) -> None:
    till = await enrolled_till(tmp_path / "t")
    try:
        good, bad = make_device("Till 2"), make_device("Till 3")
        assert await till.add_certs([good.cert, bad.cert]) == []
        assert await till.receive_entries(bad.moves(4)) == 1  # bad holds seq 1 here
        before = await state_of(till)
        good_run = good.moves(1, 2)
        # A good device's run in the same batch is refused along with the forged one.
        with pytest.raises(EntryRefused, match="do not verify"):
            await till.receive_entries(good_run + forge(bad))
        assert await state_of(till) == before
        assert await on_disk(tmp_path / "t") == before
        # The refusal left no trace in memory: the good run alone still goes in.
        assert await till.receive_entries(good_run) == 2
        assert till.heads() == {good.id: 2, bad.id: 1}
        assert bread(await till.stock()) == "7"
        assert (await till.verify()).ok
    finally:
        await till.close()


async def test_entries_of_a_device_with_no_certificate_are_refused(tmp_path: Path) -> None:
    async with await enrolled_till(tmp_path / "t") as till:
        known, stranger = make_device("Till 2"), make_device("Till 9")
        await till.add_certs([known.cert])
        before = await state_of(till)
        with pytest.raises(EntryRefused, match=stranger.id):
            await till.receive_entries(known.moves(1) + stranger.moves(1))
        assert await state_of(till) == before
        assert await on_disk(till.path) == before
        # Its certificate arrives: the same entries are taken.
        assert await till.add_certs([stranger.cert]) == []
        assert await till.receive_entries(stranger.chain.entries) == 1


async def test_a_garbage_signature_on_an_entry_inside_a_run_is_not_stored_as_is(
    tmp_path: Path,
) -> None:
    """Only the head's signature is checked on the way in; it vouches for the content
    of the run (the chain of hashes), not for the signature bytes of the entries before
    it, which are not hashed.  A forwarder can swap them for garbage.  Whatever the till
    does with such a run, its own ``verify`` must not find its log broken afterwards."""
    async with await enrolled_till(tmp_path / "t") as till:
        other = make_device()
        await till.add_certs([other.cert])
        run = other.moves(1, 2, 3)
        run[1] = dataclasses.replace(run[1], sig=bytes(64))
        try:
            await till.receive_entries(run)
        except EntryRefused:
            pass
        report = await till.verify()
        assert report.ok, report.to_json()


# -- what the relay would keep but reject: stored, without effects ---------------------


async def test_a_schema_invalid_entry_is_kept_without_effects(tmp_path: Path) -> None:
    async with await enrolled_till(tmp_path / "t") as till:
        other = make_device()
        await till.add_certs([other.cert])
        run = other.moves(5)
        run.append(other.chain.next("stock_move", {"product_id": "bread", "direction": "in",
                                                   "qty": "40"}))  # no reason: schema fails
        run += other.moves(1)
        assert await till.receive_entries(run) == 3
        assert till.heads()[other.id] == 3
        assert bread(await till.stock()) == "6"  # the invalid one moved nothing
        report = await till.verify()
        assert report.ok, report.to_json()


@pytest.mark.parametrize(("kind", "body_bytes"), [
    ("loyalty_points", msgpack.packb({"points": 3}, use_bin_type=True)),
    ("stock_move", msgpack.packb([1, 2], use_bin_type=True)),
    ("stock_move", b"\xc1"),
], ids=["unknown kind", "body not a map", "body not msgpack"])
async def test_a_signed_entry_the_relay_would_reject_neither_blocks_the_run_nor_other_writes(
    tmp_path: Path, kind: str, body_bytes: bytes,
) -> None:
    """The relay keeps such an entry in the device's chain (rejected: unknown_kind,
    malformed_body), so the device's later entries chain on it.  A till must be able to
    hold the run too (or refuse it as a bad batch), must not fail a cashier's write that
    shares the commit, and must still verify."""
    async with await enrolled_till(tmp_path / "t") as till:
        other = make_device()
        await till.add_certs([other.cert])
        run = other.moves(5)
        run.append(other.chain.next(kind, body_bytes=body_bytes))
        run += other.moves(1)
        sale_like = {"product_id": "bread", "direction": "out", "qty": "1", "reason": "x"}
        received, recorded = await asyncio.gather(
            till.receive_entries(run), till.record("stock_move", sale_like),
            return_exceptions=True)
        assert isinstance(recorded, Entry), f"the cashier's write failed: {recorded!r}"
        assert received == 3 or isinstance(received, EntryRefused), received
        report = await till.verify()
        assert report.ok, report.to_json()


async def test_an_entry_reusing_a_client_id_is_refused_without_failing_other_writes(
    tmp_path: Path,
) -> None:
    """Two entries can never share a client_id (the relay rejects the second with
    duplicate_client_id).  A forwarded entry that reuses one must be refused as a bad
    batch (``EntryRefused``), not fail the commit that a cashier's sale shares."""
    async with await enrolled_till(tmp_path / "t") as till:
        mine = await till.record("stock_move", {"product_id": "bread", "direction": "in",
                                                "qty": "1", "reason": "count"})
        other = make_device()
        await till.add_certs([other.cert])
        dup = other.chain.next("stock_move", {"product_id": "bread", "direction": "in",
                                              "qty": "5", "reason": "x"},
                               client_id=mine.client_id)
        before = await state_of(till)
        received, recorded = await asyncio.gather(
            till.receive_entries([dup]),
            till.record("stock_move", {"product_id": "bread", "direction": "out", "qty": "1",
                                       "reason": "x"}),
            return_exceptions=True)
        assert isinstance(recorded, Entry), f"the cashier's write failed: {recorded!r}"
        assert isinstance(received, EntryRefused), received
        assert [e for e in await till.entries() if e.device_id == other.id] == []
        assert till.heads() == {till.device_id: 2}
        assert bread(before["stock"]) == "1" and bread(await till.stock()) == "0"


# -- certificates ----------------------------------------------------------------------


async def test_certificates_of_the_store_are_kept_and_persist(tmp_path: Path) -> None:
    till = await enrolled_till(tmp_path / "t")
    try:
        x, y = make_device("Till 2"), make_device("Till 3")
        assert await till.add_certs([x.cert, y.cert]) == []
        assert await till.add_certs([x.cert]) == []  # again: nothing to do, no problem
        assert till.certs()[x.id] == x.cert and till.certs()[y.id] == y.cert
        assert till.device_name(x.id) == "Till 2"
    finally:
        await till.close()
    async with await Till.open(tmp_path / "t") as again:
        assert again.certs()[x.id] == x.cert
        assert await again.receive_entries(x.moves(3)) == 1


@pytest.mark.parametrize(("make", "problem"), [
    (lambda: make_device(store="shop-2"), "another store"),
    (lambda: make_device(issuer=ROGUE_KEY), "not signed by this store's key"),
], ids=["another store", "another issuer"])
async def test_a_certificate_of_another_store_or_issuer_is_refused(
    tmp_path: Path, make: Callable[[], Device], problem: str,
) -> None:
    async with await enrolled_till(tmp_path / "t") as till:
        good, bad = make_device("Till 2"), make()
        before = await state_of(till)
        problems = await till.add_certs([bad.cert, good.cert])
        assert len(problems) == 1 and problem in problems[0]
        assert bad.id not in till.certs() and till.certs()[good.id] == good.cert
        assert (await on_disk(till.path))["certs"] == {**before["certs"], good.id: good.cert}
        with pytest.raises(EntryRefused):  # its device stays unknown
            await till.receive_entries(bad.moves(1))
        assert bad.id not in till.heads()


@pytest.mark.parametrize("raw", [b"", b"\xc1", msgpack.packb(["a", "b"]),
                                 msgpack.packb([b"\x80", bytes(64)])],
                         ids=["empty", "not msgpack", "not bytes", "bad signature"])
async def test_a_certificate_that_does_not_parse_is_refused(tmp_path: Path, raw: bytes) -> None:
    async with await enrolled_till(tmp_path / "t") as till:
        before = till.certs()
        problems = await till.add_certs([raw])
        assert len(problems) == 1
        assert till.certs() == before


async def test_a_certificate_never_changes_the_key_of_a_known_device(tmp_path: Path) -> None:
    till = await enrolled_till(tmp_path / "t")
    try:
        x = make_device("Till 2")
        assert await till.add_certs([x.cert]) == []
        assert await till.receive_entries(x.moves(1)) == 1
        # The relay's signature is good, but the key is another one.
        thief = make_device("Till 2", key=DeviceKey.generate(), device_id=x.id)
        problems = await till.add_certs([thief.cert])
        assert len(problems) == 1 and "another key" in problems[0]
        assert till.certs()[x.id] == x.cert
        # Entries signed by the new key are refused; the device's own still chain on.
        thief.chain = Chain(thief.key, x.id, seq=x.chain.seq, prev=x.chain.prev)
        with pytest.raises(EntryRefused):
            await till.receive_entries(thief.moves(50))
        assert await till.receive_entries(x.moves(2)) == 1
        # And for this till's own device, too.
        own = make_device("Till 1", device_id=till.device_id)
        problems = await till.add_certs([own.cert])
        assert len(problems) == 1 and "another key" in problems[0]
        mine = till.cert
        assert mine is not None
        assert Certificate.load(mine, RELAY_KEY.public_bytes).public_key == till.public_key
    finally:
        await till.close()
    async with await Till.open(tmp_path / "t", readonly=True) as again:
        assert again.certs()[x.id] == x.cert
        assert Certificate.load(again.certs()[again.device_id],
                                RELAY_KEY.public_bytes).public_key == again.public_key


async def test_a_store_not_enrolled_at_a_relay_checks_no_certificate(tmp_path: Path) -> None:
    async with await enrolled_till(tmp_path / "t", enrolled=False) as till:
        x = make_device()
        problems = await till.add_certs([x.cert])
        assert len(problems) == 1 and "not enrolled" in problems[0]
        assert till.certs() == {}
        with pytest.raises(EntryRefused):
            await till.receive_entries(x.moves(1))


# -- schema 2: a store made before certificates and the receipt stream ----------------

_V1_DEVICES = ["device_id", "public_key", "name"]


def _downgrade_to_schema_1(db: Path) -> None:
    """Turn a store into what schema 1 looked like (see git history of peer/storage.py):
    no devices.cert, no receipt_stream, no revocations, no views.at, every view in
    millionths, schema_version 1."""
    conn = sqlite3.connect(db)
    try:
        conn.executescript("ALTER TABLE devices DROP COLUMN cert; DROP TABLE receipt_stream; "
                           "DROP TABLE revocations; DROP TABLE uncounted; "
                           "ALTER TABLE views DROP COLUMN at; "
                           "UPDATE views SET value = value * 1000000 WHERE view != 'stock'; "
                           "UPDATE meta SET value = '1' WHERE key = 'schema_version';")
        assert [r[1] for r in conn.execute("PRAGMA table_info(devices)")] == _V1_DEVICES
    finally:
        conn.close()


def _schema(db: Path) -> tuple[str | None, list[str], bool]:
    conn = sqlite3.connect(db)
    try:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        columns = [r[1] for r in conn.execute("PRAGMA table_info(devices)")]
        stream = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = "
                              "'receipt_stream'").fetchone()[0] == 1
        return (version[0] if version else None), columns, stream
    finally:
        conn.close()


async def _schema_1_store(path: Path) -> dict[str, Any]:
    """A store with entries of its own and of another device and receipts, made with
    today's code then taken back to schema 1; returns what it held."""
    till = await enrolled_till(path)
    try:
        other = make_device()
        await till.add_certs([other.cert])
        await till.receive_entries(other.moves(3, 4))
        entries = [await till.record("stock_move", {"product_id": "bread", "direction": "in",
                                                    "qty": str(q), "reason": "count"})
                   for q in (1, 2, 3)]
        # The relay's answers: entry 2 waits (server_seq 2), then is accepted (4).
        receipts: list[dict[str, Any]] = [
            {"client_id": e.client_id, "device_id": till.device_id, "seq": e.seq,
             "kind": "stock_move", "status": s, "warnings": [], "server_seq": n}
            for n, (e, s) in enumerate([(entries[0], "accepted"), (entries[1], "waiting"),
                                        (entries[2], "accepted"), (entries[1], "accepted")],
                                       start=1)]
        await till.store_receipts(receipts, 4, b"h" * 32, "2024-05-01T09:00:00.000Z")
        held: dict[str, Any] = {"state": await state_of(till),
                                "receipts": await till.receipts(),
                                "position": till.receipts_position(), "other": other}
        assert [r["server_seq"] for r in held["receipts"]] == [1, 3, 4]
    finally:
        await till.close()
    _downgrade_to_schema_1(path / "till.db")
    return held


async def test_a_schema_1_store_is_migrated_on_open_and_keeps_everything(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t"
    held = await _schema_1_store(path)
    assert _schema(path / "till.db") == ("1", _V1_DEVICES, False)

    # Read-only cannot upgrade: it says so, and leaves the file alone.
    with pytest.raises(StoreCorrupt, match="open it writable once"):
        await Till.open(path, readonly=True)
    assert _schema(path / "till.db") == ("1", _V1_DEVICES, False)

    async with await Till.open(path) as till:
        assert _schema(path / "till.db") == (str(SCHEMA_VERSION), [*_V1_DEVICES, "cert"], True)
        state = await state_of(till)
        assert {k: v for k, v in state.items() if k != "certs"} == \
            {k: v for k, v in held["state"].items() if k != "certs"}
        assert state["certs"] == {}  # schema 1 kept none; the next sync brings them back
        assert await till.receipts() == held["receipts"]
        assert till.receipts_position() == held["position"]
        # The stream holds the latest receipt of each entry: 1, 3, 4; forwarding stops
        # at the gap rather than hand on a stream with a hole.
        assert [r["server_seq"] for r in await till.stream_after(0, 10)] == [1]
        assert [r["server_seq"] for r in await till.stream_after(2, 10)] == [3, 4]
        assert (await till.verify()).ok
        # It works as a schema-2 store: certificates, forwarded entries, new entries.
        other: Device = held["other"]
        assert await till.add_certs([other.cert]) == []
        assert await till.receive_entries(other.moves(5)) == 1
        await till.record("stock_move", {"product_id": "bread", "direction": "in", "qty": "1",
                                         "reason": "count"})
        assert bread(await till.stock()) == "19"
    async with await Till.open(path, readonly=True) as reader:
        assert reader.certs()[held["other"].id] == held["other"].cert
        assert (await reader.verify()).ok


async def test_a_migration_that_fails_changes_nothing(tmp_path: Path) -> None:
    """The upgrade is one transaction: if a step fails, the store stays schema 1."""
    path = tmp_path / "t"
    await _schema_1_store(path)
    conn = sqlite3.connect(path / "till.db")
    try:  # a leftover table that makes the upgrade's CREATE TABLE fail half way
        conn.execute("CREATE TABLE receipt_stream (x INTEGER)")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(StoreCorrupt):
        await Till.open(path)
    version, columns, _ = _schema(path / "till.db")
    assert (version, columns) == ("1", _V1_DEVICES)  # the ALTER before it was undone


# -- revocations ------------------------------------------------------------------------


async def test_a_revoked_devices_later_entries_are_neither_taken_nor_passed_on(
    tmp_path: Path,
) -> None:
    till = await enrolled_till(tmp_path / "t")
    try:
        other = make_device()
        await till.add_certs([other.cert])
        assert await till.receive_entries(other.moves(1, 2)) == 2
        revocation = Revocation.issue(RELAY_KEY, store=STORE, device=other.id, upto=3,
                                      at="2024-05-01T09:00:00Z").raw
        forged = Revocation.issue(ROGUE_KEY, store=STORE, device=till.device_id, upto=0,
                                  at="2024-05-01T09:00:00Z").raw
        elsewhere = Revocation.issue(RELAY_KEY, store="shop-2", device=till.device_id, upto=0,
                                     at="2024-05-01T09:00:00Z").raw
        problems = await till.add_revocations([revocation, forged, elsewhere])
        assert problems == ["the revocation is not signed by this store's key",
                            "the revocation is for another store"]
        assert till.revoked_upto(other.id) == 3 and till.revoked_upto(till.device_id) is None
        # Seq 3 was made before the revocation, 4 and 5 after: only 3 is taken.
        assert await till.receive_entries(other.moves(3, 4, 5)) == 1
        assert till.heads()[other.id] == 3
        assert [e.seq for e in await till.entries_after({}, 100)
                if e.device_id == other.id] == [1, 2, 3]
        assert await till.entries_after({other.id: 3, till.device_id: 0}, 100) == []
    finally:
        await till.close()
    async with await Till.open(tmp_path / "t", readonly=True) as reader:
        assert reader.revoked_upto(other.id) == 3 and reader.revocations() == [revocation]


async def test_of_two_certificates_of_a_device_the_till_keeps_the_one_running_out_later(
    tmp_path: Path,
) -> None:
    """The relay issues a fresh certificate on every sync; a LAN peer may forward an
    older one afterwards.  The older never replaces the newer (no flip-flop), and a
    limited one replaces one from before certificates had limits."""
    x = make_device("Till 2")

    def issued(at: int) -> bytes:
        return Certificate.issue(RELAY_KEY, store=STORE, device=x.id, name="Till 2",
                                 role="till", public_key=x.key.public_bytes, now=at).raw

    older, newer = issued(1_800_000_000), issued(1_800_086_400)
    async with await enrolled_till(tmp_path / "t") as till:
        assert await till.add_certs([x.cert]) == []  # no limits
        assert await till.add_certs([older]) == [] and till.certs()[x.id] == older
        assert await till.add_certs([newer]) == [] and till.certs()[x.id] == newer
        assert await till.add_certs([older, x.cert]) == [] and till.certs()[x.id] == newer
    async with await Till.open(tmp_path / "t", readonly=True) as again:
        assert again.certs()[x.id] == newer


async def test_last_price_is_the_latest_sale_by_time_whatever_the_arrival_order(
    tmp_path: Path,
) -> None:
    """A "set" view keeps the latest entry's value by the entry's time, so tills that get
    each other's sales in different orders agree (found by the simulation's LAN links)."""
    till = await enrolled_till(tmp_path / "t")
    try:
        early, late = make_device("Till 2"), make_device("Till 3")
        await till.add_certs([early.cert, late.cert])
        # Each sells in its own shift (another's, or one never opened, counts for nothing).
        opened = [d.chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 0})
                  for d in (early, late)]
        first = early.chain.next("sale", sale(("bread", 1, 300),
                                              shift_client_id=opened[0].client_id))
        await asyncio.sleep(1.05)  # a later client time (the chain stamps whole seconds)
        second = late.chain.next("sale", sale(("bread", 1, 350),
                                              shift_client_id=opened[1].client_id))
        assert first.client_created_at < second.client_created_at
        await till.receive_entries([opened[1], second])
        await till.receive_entries([opened[0], first])  # arrives last, was sold first
        assert (await till._db.view("last_price"))["bread"] == 350
        assert (await till.rebuild_views())[("last_price", "bread")] == 350
        assert (await till.verify()).ok
    finally:
        await till.close()


@pytest.mark.parametrize("role", ["till", "backoffice", "admin", None],
                         ids=["till", "backoffice", "admin", "a store of its own"])
async def test_a_till_role_device_refuses_price_and_settings_edits_itself(
    tmp_path: Path, role: str | None,
) -> None:
    """The relay and the LAN peers refuse a till-role device's price or settings change;
    made anyway, every later document message would carry it and the till would fall
    out of document sync.  So the till refuses it at the source, and nothing changes."""
    me = make_device("Till 1", role=role or "till")
    await Till.init(tmp_path, name="Till 1", store_id=STORE, key=me.key, device_id=me.id,
                    relay_url="ws://relay.invalid" if role else None,
                    relay_key=RELAY_KEY.public_bytes if role else None,
                    cert=me.cert if role else None)
    async with await Till.open(tmp_path) as till:
        till.master.put("products", "bread", BREAD)  # as the back office's would bring it
        edits = [("products", "milk", {"name": "Milk", "sku": "M1", "price": 99}),  # new
                 ("settings", "store", {"store_name": "Mine"}),
                 ("products", "bread", {"price": BREAD["price"] + 10})]
        if role == "till":
            edits.append(("products", "bread", {"price": None}))
        for collection, record_id, body in edits:
            heads = till.master.heads()
            if role == "till":
                with pytest.raises(Forbidden, match="only from a back-office or admin "
                                                    "device; this device is enrolled as"):
                    await till.put(collection, record_id, body)
                assert till.master.heads() == heads, body
            else:
                await till.put(collection, record_id, body)
        # What any device may edit: customers, cashiers, a product's other fields, and a
        # price left as it is.
        await till.put("customers", "c1", {"name": "Carla"})
        await till.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})
        price = (till.get("products", "bread") or {})["price"]
        await till.put("products", "bread", {"name": "Bread, white", "price": price})
        assert (till.get("products", "bread") or {})["name"] == "Bread, white"
