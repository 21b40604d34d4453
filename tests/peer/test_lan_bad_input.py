"""Bad LAN peers against real ``peer run`` daemons (separate processes, loopback).

A peer of another store, an unenrolled peer, a peer that sends garbage, one that
forwards a forged entry, one that vanishes mid-batch: each is refused or dropped with a
reason the test sees (the ``error`` frame it gets) and the daemon logs, nothing the
daemon stored changes (``peer status``, ``peer stock`` and ``peer verify`` before and
after), and the daemon goes on syncing with its good peers.

The misbehaving peers are played by the test (``tests.peer.lan_peer``): a ``PeerLink``
over a websocket with the identity of a till enrolled at the relay, or a forged one.
The relay is only needed to enroll the tills; it is killed before the daemons start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.peer.lan_peer import FakeTill, Identity, PeerClient, identity_of, masked_frame
from tests.peer.lan_processes import LanTill, wait_until
from tests.relay.processes import (
    Chain,
    RelayProcess,
    Relays,
    cli_json,
    in_thread,
    run_cli,
)
from tillsync.peer.cert import Certificate
from tillsync.peer.identity import DeviceKey
from tillsync.peer.log import Entry
from tillsync.peer.store import Till
from tillsync.peer.sync.engine import Ingested, PeerAuthenticated, peer_transcript
from tillsync.peer.sync.frames import PROTOCOL_VERSION, encode

STORE, STORE_B = "shop-lan-a", "shop-lan-b"
BREAD = ("products", "bread", {"name": "Bread", "sku": "B1", "price": 320})
EXPENSE = {"amount": 500, "category": "cleaning", "description": "soap", "method": "cash"}


def move(qty: int) -> dict[str, Any]:
    return {"product_id": "bread", "direction": "in", "qty": str(qty), "reason": "delivery"}


def enrolled(tmp_path: Path, relay: RelayProcess, name: str, store: str = STORE) -> LanTill:
    till = LanTill(tmp_path / name.lower().replace(" ", ""), name)
    till.init(relay, store)
    return till


def state(till: LanTill) -> dict[str, Any]:
    """What the daemon's store holds, through the command line; ``verify_devices`` is
    how many devices it knows (a certificate learned adds one)."""
    status = till.status()
    result = run_cli("peer", "verify", str(till.path), "--json", check=False)
    verify = json.loads(result.stdout)
    return {"devices": status["devices"], "entries": status["entries"],
            "pending": status["pending"], "master": status["master"],
            "last_seq": status["last_seq"], "receipts": status["receipts_position"],
            "stock": cli_json("peer", "stock", str(till.path)),
            "verify": {k: verify[k] for k in ("ok", "entries_checked", "first_break",
                                              "problems")},
            "verify_devices": verify["devices"]}


def verified(till: LanTill) -> bool:
    ok: bool = json.loads(run_cli("peer", "verify", str(till.path), "--json",
                                  check=False).stdout)["ok"]
    return ok


def held(till: LanTill, device: str) -> int:
    seq: int = till.status()["devices"].get(device, {}).get("last_seq", 0)
    return seq


def peers(till: LanTill) -> dict[str, dict[str, Any]]:
    return {p["device_id"]: p for p in till.lan()["peers"]}


def no_tracebacks(*tills: LanTill) -> None:
    for till in tills:
        log = till.log()
        assert "Traceback" not in log.split("KeyboardInterrupt")[0], log[-3000:]


def entries_of(path: Path) -> list[Entry]:
    async def read() -> list[Entry]:
        async with await Till.open(path, readonly=True) as till:
            return await till.entries()
    return in_thread(read)


def refused_handshake(url: str, who: Identity, hello: bytes | str | None = None
                      ) -> list[tuple[str, bool]]:
    """Dial ``url`` as ``who`` (or send the frame ``hello`` as is); the error codes that
    came back before the daemon closed the link, which must never have been
    authenticated."""
    async def go() -> list[tuple[str, bool]]:
        if hello is None:
            client = await PeerClient.dial(url, who)
        else:
            client = await PeerClient.raw(url, who)
            await client.send(hello)
        events = await client.until_closed()
        assert not any(isinstance(e, PeerAuthenticated) for e in events), events
        return client.errors()
    return asyncio.run(go())


# -- a peer of another store ----------------------------------------------------------


@pytest.mark.slow
def test_a_till_of_another_store_is_refused_and_logged(tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        ours = enrolled(tmp_path, relay, "Till A")
        theirs = enrolled(tmp_path, relay, "Till B", STORE_B)  # same relay, another key
        ours.put_many([BREAD])
        relay.kill()
        stranger = identity_of(theirs.path)
        try:
            ours.start([], relay=False)
            before = state(ours)

            # It says which store it is: refused at once.
            assert refused_handshake(ours.url, stranger) == [("wrong_store", True)]
            # It claims ours, showing the certificate the relay gave it for its own.
            claim = encode("peer_hello", v=PROTOCOL_VERSION, store=STORE, cert=stranger.cert,
                           nonce=os.urandom(32))
            assert refused_handshake(ours.url, stranger, claim) == [("bad_certificate", True)]

            # A real daemon of the other store, told to link with ours.
            theirs.start([ours], relay=False)
            wait_until(lambda: ours.log().count("(wrong_store)") >= 2,
                       "our daemon to refuse the other store's daemon")
            wait_until(lambda: "(wrong_store)" in theirs.log(),
                       "the other daemon to log why it was refused")
            log = ours.log()
            assert "this till belongs to another store (wrong_store)" in log
            # Each store has its own key: the other store's certificate does not verify.
            assert "the certificate is not signed by this store's key (bad_certificate)" in log
            assert ours.lan()["peers"] == [] and theirs.lan()["peers"] == []
            assert state(ours) == before  # not even the stranger's certificate was kept
            # Refused for good: the other daemon says so and does not dial again soon
            # (it used to come back every second or so, forever).
            wait_until(lambda: "refuses this till" in theirs.log(), "the dialer to back off")
            assert "trying again in 300 s" in theirs.log()
            refusals = ours.log().count("(wrong_store)")
            time.sleep(3)
            assert ours.log().count("(wrong_store)") == refusals
        finally:
            ours.stop()
            theirs.stop()
        no_tracebacks(ours, theirs)


# -- an unenrolled peer ---------------------------------------------------------------


def rogue_identity() -> Identity:
    """A till with a certificate of our store's name, signed by a key that is not the
    relay's: what anyone on the LAN could make."""
    issuer, key, device = DeviceKey.generate(), DeviceKey.generate(), str(uuid.uuid4())
    cert = Certificate.issue(issuer, store=STORE, device=device, name="Rogue", role="till",
                             public_key=key.public_bytes).raw
    return Identity(STORE, device, cert, key, issuer.public_bytes)


@pytest.mark.slow
def test_an_unenrolled_peer_is_refused_whether_it_dials_or_is_dialled(tmp_path: Path) -> None:
    rogue = rogue_identity()
    with Relays(tmp_path) as relays:
        relay = relays.start()
        ours = enrolled(tmp_path, relay, "Till A")
        ours.put_many([BREAD])
        relay.kill()
        me = identity_of(ours.path)

        def challenge(message: dict[str, Any]) -> list[bytes]:
            """Answer our daemon's hello as a till would, with the rogue certificate."""
            if message["t"] != "peer_hello":
                return []
            nonce = os.urandom(32)
            proof = peer_transcript(STORE, me.device, rogue.device, message["nonce"], nonce)
            return [encode("peer_challenge", cert=rogue.cert, nonce=nonce,
                           sig=rogue.key.sign(b"listener" + proof))]

        with FakeTill(challenge) as fake:
            try:
                ours.start([LanTill(tmp_path / "fake", "fake", port=fake.port)], relay=False)
                before = state(ours)
                # It dials us: refused.
                assert refused_handshake(ours.url, rogue) == [("bad_certificate", True)]
                # We dial it: our daemon refuses its challenge and never signs an auth.
                wait_until(lambda: any(len(c) >= 2 for c in fake.connections),
                           "our daemon to dial the rogue till and answer it")
                for frames in fake.connections:
                    assert frames[0]["t"] == "peer_hello"
                    assert [(f["t"], f.get("code")) for f in frames[1:]] in (
                        [], [("error", "bad_certificate")])
                wait_until(lambda: ours.log().count(
                    "the certificate is not signed by this store's key (bad_certificate)")
                    >= 2, "both refusals in our daemon's log")
                assert ours.lan()["peers"] == []
                after = state(ours)
            finally:
                ours.stop()
        assert after == before
        no_tracebacks(ours)


# -- garbage --------------------------------------------------------------------------

GARBAGE: list[tuple[bytes | str, str]] = [
    (b"\xc1", "malformed"),
    (bytes.fromhex("00fffe"), "malformed"),
    ("peer_hello", "malformed"),
    (msgpack.packb(["peer_hello", 2]), "malformed"),
    (msgpack.packb({"t": "gossip"}), "unknown_type"),
    (msgpack.packb({"t": "peer_hello", "v": 2, "store": STORE}), "bad_field"),
    (encode("have", heads={}, receipts_head=0), "unexpected"),  # before any handshake
    (encode("entries", entries=[]), "unexpected"),
]


@pytest.mark.slow
def test_garbage_gets_an_error_and_the_peer_dropped_while_sync_goes_on(tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        one, two = enrolled(tmp_path, relay, "Till 1"), enrolled(tmp_path, relay, "Till 2")
        noisy = identity_of(enrolled(tmp_path, relay, "Till 3").path)  # enrolled, then rude
        one.put_many([BREAD])
        relay.kill()
        two_id = identity_of(two.path).device
        try:
            one.start([], relay=False)
            two.start([one], relay=False)
            wait_until(lambda: "LAN link with Till 2" in one.log(), "till 2 to link with till 1")
            before = state(one)
            garbage_from = time.time()

            for frame, code in GARBAGE:  # each on a fresh connection, closed after it
                assert refused_handshake(one.url, noisy, frame) == [(code, True)], frame

            # Garbage after a good handshake: the same.
            async def rude() -> list[tuple[str, bool]]:
                client = await PeerClient.dial(one.url, noisy)
                await client.wait_for(lambda e: isinstance(e, PeerAuthenticated))
                await client.send(b"\x93\xc1\xc1\xc1")
                await client.until_closed()
                return client.errors()
            assert asyncio.run(rude()) == [("malformed", True)]
            wait_until(lambda: not peers(one).get(noisy.device, {}).get("connected", True),
                       "till 1 to drop the rude peer")
            assert "malformed" in peers(one)[noisy.device]["last_error"]
            log = one.log()
            assert log.count("frame is not valid msgpack (malformed)") >= 3
            assert "(unknown_type)" in log and "(unexpected)" in log

            after = state(one)
            # The rude peer authenticated, so its certificate is known now; nothing else.
            assert after.pop("verify_devices") == before.pop("verify_devices") + 1
            assert after == before

            # The good link never dropped, and it still carries what is new.
            two.record("expense", EXPENSE)
            wait_until(lambda: held(one, two_id) == 1, "till 2's expense on till 1")
            assert peers(one)[two_id]["connected"]
            assert peers(one)[two_id]["since"] < garbage_from
            assert one.log().count("LAN link with Till 2") == 1
            one.record("stock_move", move(3))
            wait_until(lambda: held(two, identity_of(one.path).device) == 1,
                       "till 1's stock move on till 2")
            assert verified(one)
        finally:
            one.stop()
            two.stop()
        no_tracebacks(one, two)


# -- a forged entry -------------------------------------------------------------------


def forward(url: str, who: Identity, certs: list[bytes], entries: list[Entry]
            ) -> tuple[Ingested | None, list[tuple[str, bool]]]:
    """Link as ``who``, send ``certs`` then ``entries``; return the daemon's ``ingested``
    (None if it refused) and the error codes it sent."""
    async def go() -> tuple[Ingested | None, list[tuple[str, bool]]]:
        client = await PeerClient.dial(url, who)
        await client.wait_for(lambda e: isinstance(e, PeerAuthenticated))
        if certs:
            client.link.send_certs(certs)
        client.link.send_entries(entries)
        await client.flush()
        answer: Ingested | None = None
        async with asyncio.timeout(15):
            while not client.closed and answer is None:
                for event in await client.next_events():
                    if isinstance(event, Ingested):
                        answer = event
        await client.close()
        return answer, client.errors()
    return asyncio.run(go())


@pytest.mark.slow
def test_a_peer_forwarding_a_forged_entry_is_cut_off_and_nothing_changes(
    tmp_path: Path,
) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        ours = enrolled(tmp_path, relay, "Till 1")
        absent = enrolled(tmp_path, relay, "Till 2")  # never runs: its entries are carried
        forger = identity_of(enrolled(tmp_path, relay, "Till 3").path)
        ours.put_many([BREAD])
        absent.put_many([BREAD])
        relay.kill()
        for qty in (4, 6):
            absent.record("stock_move", move(qty))
        absent_entries = entries_of(absent.path)
        absent_id = absent_entries[0].device_id
        absent_cert = identity_of(absent.path).cert
        assert [e.seq for e in absent_entries] == [1, 2]
        own = Chain(forger.key, forger.device)
        good_own = [own.next("stock_move", move(5)) for _ in range(3)]

        tampered = msgpack.packb({**absent_entries[1].body, "qty": "600"}, use_bin_type=True)
        forgeries: list[tuple[str, list[Entry]]] = [
            ("another till's entry, its body altered",
             [absent_entries[0], dataclasses.replace(absent_entries[1], body_bytes=tampered)]),
            ("another till's entry, signed by the forwarder",
             [absent_entries[0], Chain(forger.key, absent_id, 1, absent_entries[0].hash).next(
                 "stock_move", move(600))]),
            ("its own run, the head signed by another key",
             [good_own[0], Chain(forger.key, forger.device, 1, good_own[0].hash).next(
                 "stock_move", move(600), key=DeviceKey.generate())]),
            ("its own run, the chain broken",
             [good_own[0], Chain(forger.key, forger.device, 1, bytes(32)).next(
                 "stock_move", move(600))]),
        ]
        try:
            ours.start([], relay=False)
            before = state(ours)
            for what, batch in forgeries:
                # A good entry rides along in each batch: all or nothing.
                answer, errors = forward(ours.url, forger, [absent_cert], batch)
                assert (answer, errors) == (None, [("bad_entry", True)]), what
                assert held(ours, absent_id) == held(ours, forger.device) == 0, what
            # The store is append-only: had any forgery left a trace, it would show here.
            now = state(ours)
            # The certificates of the forwarder and of the absent till were learnt (the
            # relay signed them); nothing else changed.
            assert now.pop("verify_devices") == before.pop("verify_devices") + 2
            assert now == before
            wait_until(lambda: ours.log().count("link closed, nothing stored") == len(forgeries),
                       "every forgery in our daemon's log")
            assert "do not verify" in peers(ours)[forger.device]["last_error"]
            assert not peers(ours)[forger.device]["connected"]

            # The control: the same peer forwarding the genuine entries is fine.
            answer, errors = forward(ours.url, forger, [absent_cert], absent_entries + good_own)
            assert errors == []
            assert answer is not None and answer.count == 5
            assert answer.heads[absent_id] == 2 and answer.heads[forger.device] == 3
            after = state(ours)
            assert after["devices"][absent_id]["last_seq"] == 2
            assert after["devices"][forger.device]["last_seq"] == 3
            assert next(r["qty"] for r in after["stock"] if r["product_id"] == "bread") == "25"
            assert after["verify"]["ok"]
        finally:
            ours.stop()
        no_tracebacks(ours)


@pytest.mark.slow
def test_a_peer_forwarding_an_entry_that_reuses_a_client_id_is_refused_with_a_reason(
    tmp_path: Path,
) -> None:
    """A signed entry whose client_id is already another entry's (the relay rejects it:
    duplicate_client_id) is a bad batch like any forgery: the peer gets ``bad_entry``,
    the daemon logs it, nothing is stored, and the daemon's own writes go on."""
    with Relays(tmp_path) as relays:
        relay = relays.start()
        ours = enrolled(tmp_path, relay, "Till 1")
        forger = identity_of(enrolled(tmp_path, relay, "Till 3").path)
        ours.put_many([BREAD])
        relay.kill()
        try:
            ours.start([], relay=False)
            mine = ours.record("stock_move", move(2))
            before = state(ours)
            reuse = Chain(forger.key, forger.device).next("stock_move", move(600),
                                                          client_id=mine["client_id"])
            answer, errors = forward(ours.url, forger, [], [reuse])
            assert answer is None and errors == [("bad_entry", True)], (answer, errors)
            wait_until(lambda: "link closed, nothing stored" in ours.log(),
                       "the refusal in our daemon's log")
            now = state(ours)
            now.pop("verify_devices")
            assert now == {k: v for k, v in before.items() if k != "verify_devices"}
            ours.record("stock_move", move(1))
            assert held(ours, identity_of(ours.path).device) == 2
        finally:
            ours.stop()
        no_tracebacks(ours)


# -- a peer that vanishes mid-batch ---------------------------------------------------


@pytest.mark.slow
def test_a_peer_vanishing_mid_batch_leaves_nothing_half_stored(tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        one, two = enrolled(tmp_path, relay, "Till 1"), enrolled(tmp_path, relay, "Till 2")
        flaky = identity_of(enrolled(tmp_path, relay, "Till 3").path)
        one.put_many([BREAD])
        relay.kill()
        two_id = identity_of(two.path).device
        chain = Chain(flaky.key, flaky.device)
        batches = [[chain.next("stock_move", move(1)) for _ in range(n)] for n in (3, 3, 2)]

        async def send_then_vanish(first: list[Entry], cut: list[Entry], half: bool) -> int:
            """Send ``first`` and wait for it to be ingested; then send ``cut`` (half of
            its frame, or all of it) and drop the connection at once."""
            client = await PeerClient.dial(one.url, flaky)
            await client.wait_for(lambda e: isinstance(e, PeerAuthenticated))
            head = 0
            if first:
                client.link.send_entries(first)
                await client.flush()
                ingested = await client.wait_for(lambda e: isinstance(e, Ingested))
                assert isinstance(ingested, Ingested)
                head = ingested.heads[flaky.device]
            frame = masked_frame(encode("entries", entries=[
                [e.client_id, e.device_id, e.seq, e.prev, e.kind, e.client_created_at,
                 e.ticket, e.body_bytes, e.sig] for e in cut]))
            client.vanish(frame[:len(frame) // 2] if half else frame)
            return head

        try:
            one.start([], relay=False)
            two.start([one], relay=False)
            wait_until(lambda: "LAN link with Till 2" in one.log(), "till 2 to link with till 1")

            # Half a frame, then gone: the first batch is kept whole, none of the second.
            assert asyncio.run(send_then_vanish(batches[0], batches[1], half=True)) == 3
            wait_until(lambda: not peers(one).get(flaky.device, {}).get("connected", True),
                       "till 1 to notice the peer is gone")
            assert peers(one)[flaky.device]["last_error"].startswith("connection lost")
            assert held(one, flaky.device) == 3
            assert verified(one)
            # ... and sync goes on: till 2 gets the kept batch, till 1 gets till 2's news.
            two.record("expense", EXPENSE)
            wait_until(lambda: held(one, two_id) == 1, "till 2's expense on till 1")
            wait_until(lambda: held(two, flaky.device) == 3, "the kept batch on till 2")

            # A whole frame, then gone before the answer: all of it or none of it.
            asyncio.run(send_then_vanish([], batches[1], half=False))
            time.sleep(1.0)  # let the daemon finish whatever it read
            assert held(one, flaky.device) in (3, 6)
            assert verified(one)

            # The peer comes back and carries on from where till 1 stands.
            async def resume() -> Ingested:
                client = await PeerClient.dial(one.url, flaky)
                await client.wait_for(lambda e: isinstance(e, PeerAuthenticated))
                client.link.send_entries(batches[1] + batches[2])
                await client.flush()
                ingested = await client.wait_for(lambda e: isinstance(e, Ingested))
                await client.close()
                assert isinstance(ingested, Ingested)
                return ingested
            assert asyncio.run(resume()).heads[flaky.device] == 8
            wait_until(lambda: held(two, flaky.device) == 8, "every batch on till 2")
            for till in (one, two):
                final = state(till)
                assert final["verify"]["ok"], final
                assert next(r["qty"] for r in final["stock"]
                            if r["product_id"] == "bread") == "8"
        finally:
            one.stop()
            two.stop()
        no_tracebacks(one, two)
