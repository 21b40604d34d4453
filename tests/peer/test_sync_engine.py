"""The sync links, sans I/O: a ``ClientLink`` and a ``RelayLink`` wired together in memory.

``Pair.pump`` moves what one side queued (``data_to_send``) into the other
(``receive_data``) until both are quiet, collecting the events of each side, like h11's
two-connections helper.  The relay's I/O layer (device lookup, welcome) is played by the
test itself.  The frames recorded here are also checked against
``schemas/protocol/messages.json``, so the written protocol cannot drift from the code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError, validators
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.doubles import deliver
from tillsync.peer.cert import Certificate, Revocation
from tillsync.peer.identity import DeviceKey, verify_signature
from tillsync.peer.log import GENESIS_PREV, Entry, seal
from tillsync.peer.sync.engine import (
    Authenticated,
    ClientLink,
    DocMessage,
    DocSnapshot,
    Enrolled,
    EnrollRequested,
    EntriesReceived,
    Event,
    HelloReceived,
    Ingested,
    LinkFailed,
    PeerLink,
    Ready,
    ReceiptsReceived,
    RelayLink,
    RemoteError,
)
from tillsync.peer.sync.frames import (
    MAX_BATCH,
    MAX_FRAME,
    MESSAGES,
    PROTOCOL_VERSION,
    decode,
    encode,
)
from tillsync.peer.sync.receipts import GENESIS, seal_receipts

STORE, DEVICE = "store-1", "3f1c8a52-6d1e-4b7a-9a43-0c2f5e9b7d10"
NONCE_D, NONCE_R = bytes(range(32)), bytes(range(100, 132))
# Made once: the properties below build many links and Ed25519 keys are not free.
DEVICE_KEY, RELAY_KEY, OTHER_KEY = DeviceKey.generate(), DeviceKey.generate(), DeviceKey.generate()
OTHER_CERT = Certificate.issue(RELAY_KEY, store=STORE, device="d2", name="Till 2", role="till",
                               public_key=OTHER_KEY.public_bytes).raw
CERT = Certificate.issue(RELAY_KEY, store=STORE, device=DEVICE, name="Till 1", role="till",
                         public_key=DEVICE_KEY.public_bytes).raw
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "protocol"


# -- the two-links helper -------------------------------------------------------------


@dataclass
class Pair:
    client: ClientLink
    relay: RelayLink
    client_events: list[Event] = field(default_factory=list)
    relay_events: list[Event] = field(default_factory=list)
    sent_by_client: list[bytes] = field(default_factory=list)
    sent_by_relay: list[bytes] = field(default_factory=list)

    def pump(self) -> None:
        """Deliver frames both ways until neither side has anything left to send."""
        deliver(self.client, self.relay, self.client_events, self.relay_events,
                self.sent_by_client, self.sent_by_relay)

    def take(self) -> tuple[list[Event], list[Event]]:
        """The events of (client, relay) since the last call."""
        out = self.client_events, self.relay_events
        self.client_events, self.relay_events = [], []
        return out


def make_pair(*, pinned: bytes | None = None, nonce_d: bytes = NONCE_D,
              nonce_r: bytes = NONCE_R, device_key: DeviceKey = DEVICE_KEY,
              receipts_after: int = 0, doc_empty: bool = False) -> Pair:
    return Pair(ClientLink(store=STORE, device=DEVICE, key=device_key, nonce=nonce_d,
                           relay_key=pinned, receipts_after=receipts_after,
                           doc_empty=doc_empty),
                RelayLink(nonce=nonce_r))


def handshake(pair: Pair, *, registered: bytes | None = None,
              heads: dict[str, int] | None = None, receipts_head: int = 0) -> Pair:
    """Run the handshake, the test playing the relay's I/O layer (lookup, welcome)."""
    pair.client.start()
    pair.pump()
    if any(isinstance(e, HelloReceived) for e in pair.relay_events):
        pair.relay.challenge(DEVICE_KEY.public_bytes if registered is None else registered,
                             RELAY_KEY)
        pair.pump()
    if any(isinstance(e, Authenticated) for e in pair.relay_events):
        pair.relay.welcome(heads or {}, receipts_head, CERT, [])
        pair.pump()
    return pair


def ready_pair() -> Pair:
    pair = handshake(make_pair(pinned=RELAY_KEY.public_bytes))
    assert pair.client.state == pair.relay.state == "ready"
    pair.take()
    return pair


def frame_of(data: bytes) -> dict[str, Any]:
    return dict(msgpack.unpackb(data, raw=False))


def only_error(frames: list[bytes]) -> dict[str, Any]:
    assert len(frames) == 1, [frame_of(f) for f in frames]
    error = frame_of(frames[0])
    assert error["t"] == "error"
    return error


def entries(n: int, *, key: DeviceKey = DEVICE_KEY) -> list[Entry]:
    out: list[Entry] = []
    prev = GENESIS_PREV
    for seq in range(1, n + 1):
        entry = seal(key, body={"opening_cash": 10000 + seq, "cashier_id": "ann"},
                     client_id=f"00000000-0000-4000-8000-{seq:012d}", device_id=DEVICE,
                     seq=seq, prev=prev, kind="shift_open",
                     client_created_at="2024-05-01T09:00:00.000Z",
                     ticket=None if seq % 2 else f"T01-{seq:06d}")
        out.append(entry)
        prev = entry.hash
    return out


def transcript_by_hand(nonce_d: bytes, nonce_r: bytes, relay_key: bytes) -> bytes:
    """The handshake transcript as the README writes it, not through the engine."""
    packed = msgpack.packb([STORE, DEVICE, nonce_d, nonce_r, relay_key], use_bin_type=True)
    return hashlib.sha256(b"tillsync/auth/v1" + packed).digest()


# -- handshake ------------------------------------------------------------------------


def test_full_handshake_reaches_ready_and_authenticated() -> None:
    pair = handshake(make_pair(pinned=RELAY_KEY.public_bytes, receipts_after=7,
                               doc_empty=True), heads={DEVICE: 3, "other": 9}, receipts_head=12)
    client_events, relay_events = pair.take()

    assert relay_events == [HelloReceived(STORE, DEVICE, 7, True),
                            Authenticated(STORE, DEVICE, 7, True)]
    assert client_events == [Ready({DEVICE: 3, "other": 9}, 12, CERT, [])]
    assert pair.client.state == pair.relay.state == "ready"
    assert [frame_of(f)["t"] for f in pair.sent_by_client] == ["hello", "auth"]
    assert [frame_of(f)["t"] for f in pair.sent_by_relay] == ["challenge", "welcome"]


def test_signatures_cover_the_documented_transcript() -> None:
    pair = handshake(make_pair())
    hello, auth = (frame_of(f) for f in pair.sent_by_client)
    challenge = frame_of(pair.sent_by_relay[0])
    assert hello == {"t": "hello", "v": PROTOCOL_VERSION, "store": STORE, "device": DEVICE,
                     "nonce": NONCE_D, "receipts_after": 0, "doc_empty": False}
    assert challenge["nonce"] == NONCE_R and challenge["relay_key"] == RELAY_KEY.public_bytes

    proof = transcript_by_hand(NONCE_D, NONCE_R, RELAY_KEY.public_bytes)
    assert verify_signature(RELAY_KEY.public_bytes, challenge["sig"], b"relay" + proof)
    assert verify_signature(DEVICE_KEY.public_bytes, auth["sig"], b"device" + proof)
    # Domain separation: neither signature is valid as the other side's.
    assert not verify_signature(RELAY_KEY.public_bytes, challenge["sig"], b"device" + proof)
    assert not verify_signature(DEVICE_KEY.public_bytes, auth["sig"], b"relay" + proof)


def test_unpinned_client_accepts_any_relay_that_proves_its_key() -> None:
    pair = handshake(make_pair(pinned=None))
    assert pair.client.state == "ready"


def test_a_pinned_relay_key_that_differs_is_refused_before_the_device_signs() -> None:
    pair = make_pair(pinned=OTHER_KEY.public_bytes)
    handshake(pair)
    client_events, relay_events = pair.take()

    assert [type(e) for e in client_events] == [LinkFailed]
    assert client_events[0].code == "auth_failed"  # type: ignore[attr-defined]
    assert pair.client.closed
    # The device answered the challenge with an error frame only: it signed nothing.
    assert [frame_of(f)["t"] for f in pair.sent_by_client] == ["hello", "error"]
    assert frame_of(pair.sent_by_client[1])["code"] == "auth_failed"
    assert relay_events[-1] == RemoteError("auth_failed", relay_events[-1].message,  # type: ignore[attr-defined]
                                           True)
    assert pair.relay.closed


def test_a_challenge_not_signed_by_the_relay_key_it_names_is_refused() -> None:
    pair = make_pair()
    pair.client.start()
    pair.client.data_to_send()
    proof = transcript_by_hand(NONCE_D, NONCE_R, RELAY_KEY.public_bytes)
    pair.client.receive_data(encode("challenge", nonce=NONCE_R, relay_key=RELAY_KEY.public_bytes,
                                    sig=OTHER_KEY.sign(b"relay" + proof)))
    assert [e.code for e in pair.client.events_received()] == ["auth_failed"]  # type: ignore[attr-defined]
    assert only_error(pair.client.data_to_send())["code"] == "auth_failed"
    assert pair.client.closed


def test_a_wrong_device_key_fails_auth_and_closes_the_link() -> None:
    pair = handshake(make_pair(), registered=OTHER_KEY.public_bytes)
    client_events, relay_events = pair.take()

    assert [type(e) for e in relay_events] == [HelloReceived, LinkFailed]
    assert relay_events[1].code == "auth_failed"  # type: ignore[attr-defined]
    assert pair.relay.closed and pair.relay.state == "closed"
    assert frame_of(pair.sent_by_relay[-1])["code"] == "auth_failed"
    assert [type(e) for e in client_events] == [RemoteError]
    assert client_events[0].code == "auth_failed"  # type: ignore[attr-defined]
    assert pair.client.closed


def test_a_recorded_auth_replayed_to_a_new_relay_nonce_fails() -> None:
    recorded = handshake(make_pair())
    assert recorded.relay.state == "ready"
    hello, auth = recorded.sent_by_client

    relay = RelayLink(nonce=bytes(32))  # a fresh nonce
    relay.receive_data(hello)
    assert [type(e) for e in relay.events_received()] == [HelloReceived]
    relay.challenge(DEVICE_KEY.public_bytes, RELAY_KEY)
    relay.data_to_send()
    relay.receive_data(auth)

    assert [(type(e), e.code) for e in relay.events_received()] == [  # type: ignore[attr-defined]
        (LinkFailed, "auth_failed")]
    assert only_error(relay.data_to_send())["code"] == "auth_failed"
    assert relay.closed


def test_a_recorded_challenge_replayed_to_a_new_device_nonce_fails() -> None:
    recorded = handshake(make_pair())
    challenge = recorded.sent_by_relay[0]

    client = ClientLink(store=STORE, device=DEVICE, key=DEVICE_KEY, nonce=bytes(32),
                        relay_key=RELAY_KEY.public_bytes)
    client.start()
    client.data_to_send()
    client.receive_data(challenge)
    assert [e.code for e in client.events_received()] == ["auth_failed"]  # type: ignore[attr-defined]
    assert only_error(client.data_to_send())["code"] == "auth_failed"


# -- frames refused before or outside the handshake -----------------------------------


def _relay_in(state: str) -> RelayLink:
    pair = make_pair()
    if state == "enrolling":
        pair.relay.receive_data(encode("enroll", v=PROTOCOL_VERSION, code="ABCDE", device=DEVICE,
                                       name="Till 1", public_key=DEVICE_KEY.public_bytes))
    elif state != "new":
        pair.client.start()
        pair.pump()
    if state in ("challenged", "authenticated", "ready"):
        pair.relay.challenge(DEVICE_KEY.public_bytes, RELAY_KEY)
        if state != "challenged":
            pair.pump()
    if state == "ready":
        pair.relay.welcome({}, 0, CERT, [])
        pair.pump()
    pair.relay.data_to_send()
    assert pair.relay.state == state
    return pair.relay


def _client_in(state: str) -> ClientLink:
    pair = make_pair()
    if state == "new":
        return pair.client
    if state == "hello_sent":
        pair.client.start()
        pair.client.data_to_send()
        return pair.client
    if state == "enrolling":
        pair.client.start_enroll("ABCDE-FGHIJ", "Till 1")
        pair.client.data_to_send()
        return pair.client
    pair.client.start()
    pair.pump()
    pair.relay.challenge(DEVICE_KEY.public_bytes, RELAY_KEY)
    pair.pump()
    assert pair.client.state == "authenticating"
    if state == "authenticating":
        return pair.client
    pair.relay.welcome({}, 0, CERT, [])
    pair.pump()
    return pair.client


HELLO = encode("hello", v=1, store=STORE, device=DEVICE, nonce=NONCE_D, receipts_after=0,
               doc_empty=False)
ENTRIES = encode("entries", entries=[])
DOC = encode("doc", m=b"\x42")
AUTH = encode("auth", sig=bytes(64))
WELCOME = encode("welcome", heads={}, receipts_head=0, cert=CERT, revoked=[])
RECEIPTS = encode("receipts", receipts=[], head=0)
CHALLENGE = encode("challenge", nonce=NONCE_R, relay_key=RELAY_KEY.public_bytes, sig=bytes(64))
INGESTED = encode("ingested", heads={}, count=0, receipts_head=0)


@pytest.mark.parametrize(("state", "frame"), [
    ("new", ENTRIES), ("new", DOC), ("new", AUTH), ("new", WELCOME),
    ("looking_up", AUTH), ("looking_up", ENTRIES), ("looking_up", HELLO),
    ("challenged", HELLO), ("challenged", ENTRIES), ("challenged", DOC),
    ("authenticated", ENTRIES), ("authenticated", AUTH), ("authenticated", DOC),
    ("enrolling", HELLO), ("enrolling", ENTRIES),
    ("ready", HELLO), ("ready", AUTH), ("ready", RECEIPTS), ("ready", INGESTED),
])
def test_relay_refuses_a_message_out_of_turn(state: str, frame: bytes) -> None:
    relay = _relay_in(state)
    relay.events_received()
    relay.receive_data(frame)
    events = relay.events_received()
    assert [(type(e), e.code) for e in events] == [(LinkFailed, "unexpected")]  # type: ignore[attr-defined]
    error = only_error(relay.data_to_send())
    assert (error["code"], error["fatal"]) == ("unexpected", True)
    assert relay.closed


@pytest.mark.parametrize(("state", "frame"), [
    ("new", CHALLENGE), ("new", RECEIPTS),
    ("hello_sent", WELCOME), ("hello_sent", RECEIPTS), ("hello_sent", DOC),
    ("hello_sent", INGESTED), ("authenticating", CHALLENGE), ("authenticating", DOC),
    ("enrolling", CHALLENGE), ("enrolling", WELCOME),
    ("ready", CHALLENGE), ("ready", WELCOME), ("ready", HELLO), ("ready", ENTRIES),
])
def test_client_refuses_a_message_out_of_turn(state: str, frame: bytes) -> None:
    client = _client_in(state)
    client.events_received()
    client.receive_data(frame)
    assert [(type(e), e.code) for e in client.events_received()] == [  # type: ignore[attr-defined]
        (LinkFailed, "unexpected")]
    assert only_error(client.data_to_send())["code"] == "unexpected"
    assert client.closed


# -- malformed frames -----------------------------------------------------------------


def _packed(value: object) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def _hello(**change: object) -> dict[str, Any]:
    fields: dict[str, Any] = {"t": "hello", "v": 1, "store": STORE, "device": DEVICE,
                              "nonce": NONCE_D, "receipts_after": 0, "doc_empty": False}
    fields.update(change)
    return {k: v for k, v in fields.items() if v is not _DROP}


_DROP = object()

BAD_FRAMES: list[tuple[str, bytes | str, str]] = [
    ("text frame", "hello", "malformed"),
    ("text frame of json", '{"t": "hello"}', "malformed"),
    ("empty frame", b"", "malformed"),
    ("reserved byte", b"\xc1", "malformed"),
    ("truncated map", _packed(_hello())[:-5], "malformed"),
    ("trailing bytes", _packed(_hello()) + b"\x00", "malformed"),
    ("not a map", _packed(["hello", 1]), "malformed"),
    ("map without t", _packed({"v": 1}), "malformed"),
    ("t not a string", _packed({"t": 1}), "malformed"),
    ("t as bin", _packed({"t": b"hello"}), "malformed"),
    ("integer map key", _packed({"t": "hello", 1: 2}), "malformed"),
    ("invalid utf-8", b"\x81\xa1t\xa2\xff\xfe", "malformed"),
    ("unknown type", _packed({"t": "gossip"}), "unknown_type"),
    ("type of another version", _packed({"t": "HELLO"}), "unknown_type"),
    ("missing field", _packed(_hello(nonce=_DROP)), "bad_field"),
    ("missing fields", _packed({"t": "hello"}), "bad_field"),
    ("extra field", _packed(_hello(cert=b"x")), "bad_field"),
    ("nonce too short", _packed(_hello(nonce=bytes(31))), "bad_field"),
    ("nonce as str", _packed(_hello(nonce="0" * 32)), "bad_field"),
    ("v as str", _packed(_hello(v="1")), "bad_field"),
    ("v negative", _packed(_hello(v=-1)), "bad_field"),
    ("v as float", _packed(_hello(v=1.0)), "bad_field"),
    ("bool for int", _packed(_hello(receipts_after=True)), "bad_field"),
    ("int for bool", _packed(_hello(doc_empty=0)), "bad_field"),
    ("nil for bool", _packed(_hello(doc_empty=None)), "bad_field"),
    ("empty store", _packed(_hello(store="")), "bad_field"),
    ("store too long", _packed(_hello(store="s" * 201)), "bad_field"),
    ("store as bin", _packed(_hello(store=STORE.encode())), "bad_field"),
    ("oversized frame", _packed(_hello(store="s" * (MAX_FRAME + 1))), "too_large"),
]


@pytest.mark.parametrize(("frame", "code"), [(f, c) for _, f, c in BAD_FRAMES],
                         ids=[name for name, _, _ in BAD_FRAMES])
def test_relay_answers_a_bad_frame_with_an_error_frame(frame: bytes | str, code: str) -> None:
    relay = RelayLink(nonce=NONCE_R)
    relay.receive_data(frame)
    events = relay.events_received()
    assert [(type(e), e.code) for e in events] == [(LinkFailed, code)]  # type: ignore[attr-defined]
    error = only_error(relay.data_to_send())
    fatal = code != "too_large"  # a frame a little too big is dropped; the link goes on
    assert (error["code"], error["fatal"]) == (code, fatal)
    assert relay.closed == fatal


@pytest.mark.parametrize(("frame", "code"), [(f, c) for _, f, c in BAD_FRAMES],
                         ids=[name for name, _, _ in BAD_FRAMES])
def test_client_answers_a_bad_frame_with_an_error_frame(frame: bytes | str, code: str) -> None:
    client = _client_in("ready")
    client.receive_data(frame)
    assert [(type(e), e.code) for e in client.events_received()] == [  # type: ignore[attr-defined]
        (LinkFailed, code)]
    error = only_error(client.data_to_send())
    assert (error["code"], error["fatal"]) == (code, code != "too_large")
    assert client.closed == error["fatal"]


def test_a_frame_of_exactly_max_frame_bytes_is_not_too_large() -> None:
    overhead = len(_packed({"t": "doc", "m": bytes(70_000)})) - 70_000  # a bin32 header
    data = bytes(MAX_FRAME - overhead)
    assert len(_packed({"t": "doc", "m": data})) == MAX_FRAME
    client = _client_in("ready")
    client.receive_data(_packed({"t": "doc", "m": data}))
    assert client.events_received() == [DocMessage(data)]
    client.receive_data(_packed({"t": "doc", "m": data + b"!"}))
    assert [e.code for e in client.events_received()] == ["too_large"]  # type: ignore[attr-defined]
    assert only_error(client.data_to_send())["fatal"] is False
    assert client.state == "ready"
    client.receive_data(DOC)  # the link goes on after a frame a little too big
    assert client.events_received() == [DocMessage(b"\x42")]


def test_error_messages_never_echo_a_long_type_or_field_name() -> None:
    relay = RelayLink(nonce=NONCE_R)
    relay.receive_data(_packed({"t": "x" * 5000}))
    assert len(only_error(relay.data_to_send())["message"]) < 200


@pytest.mark.parametrize(("t", "frame", "code"), [
    ("welcome heads not str->int",
     encode("welcome", heads={DEVICE: "3"}, receipts_head=0, cert=CERT, revoked=[]),
     "bad_field"),
    ("welcome heads with bin keys",
     encode("welcome", heads={b"d": 3}, receipts_head=0, cert=CERT, revoked=[]),
     "bad_field"),
])
def test_client_checks_welcome_heads(t: str, frame: bytes, code: str) -> None:
    client = _client_in("authenticating")
    client.receive_data(frame)
    assert [e.code for e in client.events_received()] == [code]  # type: ignore[attr-defined]
    assert client.closed


def test_client_checks_that_each_receipt_is_a_map() -> None:
    client = _client_in("ready")
    client.receive_data(encode("receipts", receipts=[{"server_seq": 1}, [1]], head=2))
    assert [e.code for e in client.events_received()] == ["bad_field"]  # type: ignore[attr-defined]
    assert client.closed


@pytest.mark.parametrize("v", [0, 1, 2, 3, 4, 6, 99])
def test_a_hello_of_another_version_is_refused(v: int) -> None:
    relay = RelayLink(nonce=NONCE_R)
    relay.receive_data(_packed(_hello(v=v)))
    assert [(type(e), e.code) for e in relay.events_received()] == [  # type: ignore[attr-defined]
        (LinkFailed, "version")]
    error = only_error(relay.data_to_send())
    assert (error["code"], error["fatal"]) == ("version", True)
    assert relay.closed


def test_an_enroll_of_another_version_is_refused() -> None:
    relay = RelayLink(nonce=NONCE_R)
    relay.receive_data(encode("enroll", v=1, code="C", device=DEVICE, name="Till",
                              public_key=DEVICE_KEY.public_bytes))
    assert [e.code for e in relay.events_received()] == ["version"]  # type: ignore[attr-defined]
    assert relay.closed


# -- errors from the other side -------------------------------------------------------


def test_a_non_fatal_remote_error_keeps_the_link_open() -> None:
    pair = ready_pair()
    pair.relay.fail("bad_document", "bad document sync message", fatal=False)
    pair.pump()
    client_events, _ = pair.take()
    assert client_events == [RemoteError("bad_document", "bad document sync message", False)]
    assert pair.client.state == pair.relay.state == "ready"


def test_a_fatal_remote_error_closes_the_link_and_later_frames_are_ignored() -> None:
    client = _client_in("hello_sent")
    client.receive_data(encode("error", code="unknown_device", message="not enrolled",
                               fatal=True))
    assert client.events_received() == [RemoteError("unknown_device", "not enrolled", True)]
    assert client.closed and client.data_to_send() == []
    client.receive_data(b"\xc1")
    client.receive_data(WELCOME)
    assert client.events_received() == [] and client.data_to_send() == []


def test_a_closed_relay_link_ignores_everything() -> None:
    relay = _relay_in("ready")
    relay.fail("revoked", "this device has been revoked")
    assert frame_of(relay.data_to_send()[0])["fatal"] is True
    relay.receive_data(ENTRIES)
    assert relay.events_received() == [] and relay.data_to_send() == []


# -- enrollment -----------------------------------------------------------------------


def test_enrollment_round_trip() -> None:
    key = DeviceKey.generate()
    pair = Pair(ClientLink(store="", device=DEVICE, key=key, nonce=NONCE_D),
                RelayLink(nonce=NONCE_R))
    pair.client.start_enroll("ABCDE-FGHIJ-KLMNO-PQRST", "Till 3")
    pair.pump()
    _, relay_events = pair.take()
    assert relay_events == [EnrollRequested("ABCDE-FGHIJ-KLMNO-PQRST", DEVICE, "Till 3",
                                            key.public_bytes)]
    assert pair.relay.state == "enrolling"

    pair.relay.enrolled(STORE, DEVICE, CERT, RELAY_KEY)
    pair.pump()
    client_events, _ = pair.take()
    assert client_events == [Enrolled(STORE, DEVICE, RELAY_KEY.public_bytes, CERT)]
    assert pair.client.closed and pair.relay.closed
    assert frame_of(pair.sent_by_client[0]) == {
        "t": "enroll", "v": PROTOCOL_VERSION, "code": "ABCDE-FGHIJ-KLMNO-PQRST",
        "device": DEVICE, "name": "Till 3", "public_key": key.public_bytes}


def test_a_refused_enrollment_code_is_a_fatal_error() -> None:
    pair = Pair(ClientLink(store="", device=DEVICE, key=DEVICE_KEY, nonce=NONCE_D),
                RelayLink(nonce=NONCE_R))
    pair.client.start_enroll("WRONG", "Till 3")
    pair.pump()
    pair.relay.fail("bad_code", "the enrollment code is unknown, used or expired")
    pair.pump()
    client_events, _ = pair.take()
    assert [(type(e), e.code) for e in client_events] == [(RemoteError, "bad_code")]  # type: ignore[attr-defined]
    assert pair.client.closed


# -- after the handshake --------------------------------------------------------------


def test_entries_round_trip_as_identical_entry_objects() -> None:
    pair = ready_pair()
    sent = entries(5)
    pair.client.send_entries(sent)
    pair.pump()
    _, relay_events = pair.take()
    assert relay_events == [EntriesReceived(sent)]
    received = relay_events[0].entries  # type: ignore[attr-defined]
    assert [e.hash for e in received] == [e.hash for e in sent]
    assert all(e.signature_valid(DEVICE_KEY.public_bytes) for e in received)

    pair.relay.send_ingested({DEVICE: 5}, 5, 4)
    pair.pump()
    client_events, _ = pair.take()
    assert client_events == [Ingested({DEVICE: 5}, 5, 4)]


def test_entry_wire_format_is_the_documented_nine_element_array() -> None:
    pair = ready_pair()
    entry = entries(2)[1]
    pair.client.send_entries([entry])
    wire = frame_of(pair.client.data_to_send()[0])["entries"][0]
    assert wire == [entry.client_id, DEVICE, 2, entries(1)[0].hash, "shift_open",
                    "2024-05-01T09:00:00.000Z", "T01-000002", entry.body_bytes, entry.sig]
    # The hash, by hand: a 9-array [1, ...first seven..., body] with body inlined as a map.
    head = msgpack.packb([1, *wire[:7], None], use_bin_type=True)
    assert head[0] == 0x99 and head[-1] == 0xC0
    canonical = head[:-1] + wire[7]
    assert canonical == msgpack.packb([1, *wire[:7], msgpack.unpackb(wire[7])],
                                      use_bin_type=True)
    assert hashlib.sha256(canonical).digest() == entry.hash
    assert verify_signature(DEVICE_KEY.public_bytes, wire[8], entry.hash)
    assert wire[7] == msgpack.packb({"cashier_id": "ann", "opening_cash": 10002},
                                    use_bin_type=True)


def test_an_empty_entries_frame_is_allowed() -> None:
    pair = ready_pair()
    pair.client.send_entries([])
    pair.pump()
    assert pair.take()[1] == [EntriesReceived([])]


@pytest.mark.parametrize("item", [
    ["too", "short"],
    [*["c", "d", 1, bytes(32), "sale", "at", None, b"\x80"], bytes(63)],
    ["c", "d", 1, bytes(31), "sale", "at", None, b"\x80", bytes(64)],
    ["c", "d", -1, bytes(32), "sale", "at", None, b"\x80", bytes(64)],
    ["c", "d", 1, bytes(32), "sale", "at", 5, b"\x80", bytes(64)],
    ["c", "d", 1, bytes(32), "sale", "at", None, {}, bytes(64)],
    {"client_id": "c"},
])
def test_a_badly_shaped_entry_is_a_non_fatal_error_for_the_whole_frame(item: object) -> None:
    pair = ready_pair()
    good = entries(1)[0]
    pair.relay.receive_data(encode("entries", entries=[
        [good.client_id, DEVICE, 1, good.prev, good.kind, good.client_created_at, None,
         good.body_bytes, good.sig], item]))
    events = pair.relay.events_received()
    assert [(type(e), e.code) for e in events] == [(LinkFailed, "bad_field")]  # type: ignore[attr-defined]
    error = only_error(pair.relay.data_to_send())
    assert (error["code"], error["fatal"]) == ("bad_field", False)
    assert pair.relay.state == "ready"  # the link goes on; that frame is dropped whole


def test_more_than_max_batch_entries_in_one_frame_is_refused() -> None:
    relay = _relay_in("ready")
    relay.receive_data(encode("entries", entries=[[]] * (MAX_BATCH + 1)))
    assert [e.code for e in relay.events_received()] == ["bad_field"]  # type: ignore[attr-defined]
    assert relay.closed


def test_receipts_doc_and_snapshot_reach_the_client() -> None:
    pair = ready_pair()
    receipts = [{"client_id": "c", "status": "accepted", "warnings": []}]
    seal_receipts(RELAY_KEY, receipts, 1, GENESIS)
    pair.relay.send_receipts(receipts, 1)
    pair.relay.send_snapshot(b"snapshot")
    pair.relay.send_doc(b"sync-1")
    pair.client.send_doc(b"sync-2")
    pair.pump()
    client_events, relay_events = pair.take()
    assert client_events == [ReceiptsReceived(receipts, 1), DocSnapshot(b"snapshot"),
                             DocMessage(b"sync-1")]
    assert relay_events == [DocMessage(b"sync-2")]


# -- the written protocol matches the frames ------------------------------------------


def _bin(validator: Any, value: str, instance: object, schema: dict[str, Any]) -> Any:
    if value == "bin" and not isinstance(instance, bytes):
        yield ValidationError(f"{instance!r} is not msgpack bin")
        return
    if isinstance(instance, bytes):
        size = schema.get("x-length")
        if size is not None and len(instance) != size:
            yield ValidationError(f"bin of {len(instance)} bytes, not {size}")


def _frame_validator() -> Callable[[dict[str, Any]], list[str]]:
    resources = []
    for name in ("messages.json", "receipt.json", "entry.json"):
        schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        assert schema["$id"] == f"https://tillsync.dev/schemas/protocol/{name}"
        resources.append((schema["$id"], Resource.from_contents(schema, DRAFT202012)))
    registry: Registry = Registry().with_resources(resources)
    # As for entry bodies: a msgpack float is never an integer, even 1.0.
    types = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
    checker = validators.extend(Draft202012Validator, {"x-msgpack": _bin}, type_checker=types)
    messages = json.loads((SCHEMAS / "messages.json").read_text(encoding="utf-8"))
    validator = checker(messages, registry=registry)

    def problems(frame: dict[str, Any]) -> list[str]:
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in validator.iter_errors(frame)]

    return problems


def _session_frames() -> list[bytes]:
    pair = handshake(make_pair(pinned=RELAY_KEY.public_bytes), heads={DEVICE: 2},
                     receipts_head=3)
    pair.client.send_entries(entries(3))
    pair.relay.send_ingested({DEVICE: 3}, 3, 4)
    receipts: list[dict[str, Any]] = [
        {"client_id": "c1", "device_id": DEVICE, "seq": 1, "kind": "shift_open",
         "status": "accepted", "warnings": [], "server_id": "shift-1"},
        {"client_id": "c2", "device_id": DEVICE, "seq": 2, "kind": "sale", "ticket": "T1-1",
         "status": "waiting", "warnings": [], "waiting_for": ["c9"]},
        {"client_id": "c3", "device_id": DEVICE, "seq": 3, "kind": "sale", "ticket": "T1-2",
         "status": "accepted", "series": "INV", "invoice_no": 1, "total": 640,
         "shift_server_id": "shift-1",
         "warnings": [{"code": "total_mismatch", "client_total": 600, "total": 640},
                      {"code": "low_stock", "product_id": "bread", "qty": "4",
                       "reorder_level": "5"},
                      {"code": "unknown_product", "product_id": "x"}]},
        {"client_id": "c4", "device_id": "d2", "seq": 1, "kind": "sale", "status": "rejected",
         "warnings": [], "error": {"code": "unknown_device", "message": "no such device"}},
    ]
    seal_receipts(RELAY_KEY, receipts, 1, GENESIS)
    pair.relay.send_receipts(receipts, 4)
    pair.relay.send_snapshot(b"\x85\x6f\x4a\x83")
    pair.relay.send_doc(b"\x42\x01")
    pair.client.send_doc(b"\x42\x02")
    pair.relay.fail("bad_document", "bad document sync message", fatal=False)
    sha = hashlib.sha256(b"%PDF-1").digest()  # a file, offered, sent and held
    pair.client.send_file("file_offer", sha, size=6, type="application/pdf")
    pair.relay.send_file("file_want", sha, offset=0)
    pair.client.send_file("file_chunk", sha, offset=0, data=b"%PDF-1")
    pair.relay.send_file("file_have", sha)
    pair.relay.send_file("file_refused", sha, code="too_large", message="at most 10 MiB")
    pair.pump()
    enroll = Pair(ClientLink(store="", device=DEVICE, key=DEVICE_KEY, nonce=NONCE_D),
                  RelayLink(nonce=NONCE_R))
    enroll.client.start_enroll("ABCDE-FGHIJ", "Till 1")
    enroll.pump()
    enroll.relay.enrolled(STORE, DEVICE, CERT, RELAY_KEY)
    enroll.pump()
    dialer = PeerLink(store=STORE, cert=CERT, key=DEVICE_KEY, issuer=RELAY_KEY.public_bytes,
                      nonce=NONCE_D, dialer=True)
    listener = PeerLink(store=STORE, cert=OTHER_CERT, key=OTHER_KEY,
                        issuer=RELAY_KEY.public_bytes, nonce=NONCE_R, dialer=False)
    dialer.start()
    lan: list[bytes] = []
    for _ in range(3):  # peer_hello, peer_challenge, auth
        for src, dst in ((dialer, listener), (listener, dialer)):
            for frame in src.data_to_send():
                lan.append(frame)
                dst.receive_data(frame)
    assert dialer.state == listener.state == "ready"
    dialer.send_have({DEVICE: 3}, 4)
    dialer.send_certs([CERT])
    dialer.send_revoked([Revocation.issue(RELAY_KEY, store=STORE, device="d9", upto=3,
                                          at="2024-05-01T09:00:00Z").raw])
    listener.send_have({}, 0)
    listener.send_links([DEVICE, "d7"])
    listener.send_edit(b"\x42\x03")
    lan += dialer.data_to_send() + listener.data_to_send()
    frames = (pair.sent_by_client + pair.sent_by_relay + enroll.sent_by_client
              + enroll.sent_by_relay + lan)
    assert {frame_of(f)["t"] for f in frames} == set(MESSAGES)
    return frames


def test_every_frame_of_a_session_matches_messages_json() -> None:
    problems = _frame_validator()
    for frame in _session_frames():
        decoded = decode(frame)
        assert problems(decoded) == [], decoded["t"]


def test_messages_json_names_exactly_the_fields_of_the_code() -> None:
    schema = json.loads((SCHEMAS / "messages.json").read_text(encoding="utf-8"))
    described = {d["properties"]["t"]["const"]: set(d["properties"]) - {"t"}
                 for d in schema["$defs"].values() if "t" in d.get("properties", {})}
    assert described == {t: set(fields) for t, fields in MESSAGES.items()}
    for t, fields in MESSAGES.items():
        definition = next(d for d in schema["$defs"].values()
                          if d.get("properties", {}).get("t", {}).get("const") == t)
        assert set(definition["required"]) == {"t", *fields}
        assert definition["additionalProperties"] is False


@pytest.mark.parametrize(("name", "frame"), [(n, f) for n, f, c in BAD_FRAMES
                                             if c in ("bad_field", "unknown_type")],
                         ids=[n for n, _, c in BAD_FRAMES if c in ("bad_field", "unknown_type")])
def test_messages_json_refuses_what_the_code_refuses(name: str, frame: bytes) -> None:
    assert _frame_validator()(msgpack.unpackb(frame, raw=False)) != [], name


# -- property: no input makes a link raise --------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False) | st.text(max_size=12) | st.binary(max_size=70))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_names = st.sampled_from(sorted({n for fields in MESSAGES.values() for n in fields}))


def _plausible(name: str) -> st.SearchStrategy[object]:
    """Values that pass (or nearly pass) the check of field ``name``."""
    if name in ("nonce", "relay_key", "public_key"):
        return st.binary(min_size=31, max_size=33)
    if name == "sig":
        return st.binary(min_size=64, max_size=64)
    if name in ("m", "data"):
        return st.binary(max_size=40)
    if name in ("v", "receipts_after", "receipts_head", "count", "head"):
        return st.integers(-1, 3)
    if name in ("doc_empty", "fatal"):
        return st.booleans()
    if name == "heads":
        return st.dictionaries(st.text(max_size=5), st.integers(0, 9) | _scalars, max_size=3)
    if name == "entries":
        entry = st.sampled_from([[e.client_id, e.device_id, e.seq, e.prev, e.kind,
                                  e.client_created_at, e.ticket, e.body_bytes, e.sig]
                                 for e in entries(2)])
        return st.lists(entry | st.lists(_scalars, min_size=9, max_size=9) | _values,
                        max_size=3)
    if name == "receipts":
        return st.lists(st.dictionaries(st.text(max_size=5), _scalars, max_size=3)
                        | _values, max_size=3)
    return st.text(min_size=0, max_size=12)


@st.composite
def _near_valid(draw: st.DrawFn) -> bytes:
    t = draw(st.sampled_from(sorted(MESSAGES)))
    fields = {n: draw(_plausible(n)) for n in MESSAGES[t] if draw(st.integers(0, 9))}
    if draw(st.booleans()):
        fields.update(draw(st.dictionaries(_names | st.text(max_size=4), _values, max_size=2)))
    return _packed({"t": t, **fields})


_frames = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=20),
    _values.map(_packed),
    st.dictionaries(st.text(max_size=6), _values, max_size=4).map(_packed),
    _near_valid(),
    st.sampled_from(_session_frames()),
)

_STATES = [("relay", s) for s in ("new", "looking_up", "challenged", "authenticated", "ready",
                                  "enrolling")] + [
    ("client", s) for s in ("new", "hello_sent", "authenticating", "enrolling", "ready")]


@given(st.sampled_from(_STATES), st.lists(_frames, min_size=1, max_size=5))
def test_no_input_makes_a_link_raise(where: tuple[str, str], frames: list[bytes | str]) -> None:
    side, state = where
    link: ClientLink | RelayLink = _relay_in(state) if side == "relay" else _client_in(state)
    link.events_received()
    link.data_to_send()
    for frame in frames:
        was_closed = link.closed
        link.receive_data(frame)
        events, out = link.events_received(), link.data_to_send()
        if was_closed:
            assert events == [] and out == []
            continue
        failed = [e for e in events if isinstance(e, LinkFailed)]
        errors = [decode(f) for f in out if decode(f)["t"] == "error"]
        # Every frame is answered: an event, an error frame, or (a good challenge) an auth.
        assert events or out, "the frame was swallowed without a trace"
        assert len(failed) <= 1 and len(errors) == len(failed)
        if failed:
            assert failed == events  # a refused frame reports nothing else
            assert errors[0]["code"] == failed[0].code
            assert link.closed == errors[0]["fatal"]
        for data in out:
            decode(data)  # whatever a link sends is a valid frame


# -- the README's test vectors are what the code computes -----------------------------


def test_the_readme_test_vectors_are_reproduced_by_the_code() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tillsync.peer.log import canonical_body
    from tillsync.peer.master.document import genesis
    from tillsync.peer.sync.engine import peer_transcript, transcript

    device = DeviceKey(Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32))
    relay = DeviceKey(Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32))
    nonce_d, nonce_r = bytes(range(32)), bytes(range(32, 64))
    proof = transcript(STORE, DEVICE, nonce_d, nonce_r, relay.public_bytes)
    assert proof == transcript_by_hand(nonce_d, nonce_r, relay.public_bytes)
    client = ClientLink(store=STORE, device=DEVICE, key=device, nonce=nonce_d)
    client.start()
    entry = seal(device, body={"opening_cash": 10000, "cashier_id": "ann"},
                 client_id="0b7e7f52-1f7a-4c3e-9d55-3c0f4a1e9b21", device_id=DEVICE, seq=1,
                 prev=GENESIS_PREV, kind="shift_open",
                 client_created_at="2024-05-01T09:00:00.000Z", ticket=None)
    receipts: list[dict[str, Any]] = [
        {"client_id": entry.client_id, "device_id": DEVICE, "seq": 1, "kind": "shift_open",
         "status": "accepted", "warnings": [], "server_id": "shift-1"}]
    head = seal_receipts(relay, receipts, 1, GENESIS)
    doc = genesis()
    # Certificates and the LAN handshake: the device above dials a listener "d2" (seed
    # 32 x 0x03); nonce_d and nonce_r serve as the dialer's and the listener's nonces.
    listener_key = DeviceKey(Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32))
    cert = Certificate.issue(relay, store=STORE, device=DEVICE, name="Till 1", role="till",
                             public_key=device.public_bytes).raw
    listener_cert = Certificate.issue(relay, store=STORE, device="d2", name="Till 2",
                                      role="till", public_key=listener_key.public_bytes).raw
    body, cert_sig = msgpack.unpackb(cert)
    assert body == canonical_body({"v": 1, "store": STORE, "device": DEVICE, "name": "Till 1",
                                   "role": "till", "public_key": device.public_bytes})
    assert verify_signature(relay.public_bytes, cert_sig, b"tillsync/cert/v1" + body)
    peer_packed = msgpack.packb([STORE, DEVICE, "d2", nonce_d, nonce_r], use_bin_type=True)
    peer_proof = peer_transcript(STORE, DEVICE, "d2", nonce_d, nonce_r)
    assert peer_proof == hashlib.sha256(b"tillsync/peer/v2" + peer_packed).digest()
    dialer = PeerLink(store=STORE, cert=cert, key=device, issuer=relay.public_bytes,
                      nonce=nonce_d, dialer=True)
    listener = PeerLink(store=STORE, cert=listener_cert, key=listener_key,
                        issuer=relay.public_bytes, nonce=nonce_r, dialer=False)
    dialer.start()
    [peer_hello] = dialer.data_to_send()
    listener.receive_data(peer_hello)
    [peer_challenge] = listener.data_to_send()
    dialer.receive_data(peer_challenge)
    [peer_auth] = dialer.data_to_send()
    listener.receive_data(peer_auth)
    assert dialer.state == listener.state == "ready"
    listener_sig, dialer_sig = frame_of(peer_challenge)["sig"], frame_of(peer_auth)["sig"]
    assert listener_sig == listener_key.sign(b"listener" + peer_proof)
    assert dialer_sig == device.sign(b"dialer" + peer_proof)
    vectors = [
        device.public_bytes, relay.public_bytes, client.data_to_send()[0],
        msgpack.packb([STORE, DEVICE, nonce_d, nonce_r, relay.public_bytes], use_bin_type=True),
        proof, relay.sign(b"relay" + proof), device.sign(b"device" + proof),
        entry.body_bytes, entry.canonical(), entry.hash, entry.sig,
        canonical_body({k: v for k, v in receipts[0].items() if k != "sig"}), head,
        receipts[0]["sig"], doc.get_heads()[0], doc.get_changes([])[0].bytes,
        body, cert_sig, cert, listener_key.public_bytes, listener_cert, peer_hello,
        peer_packed, peer_proof, listener_sig, dialer_sig,
    ]
    readme = "".join((SCHEMAS / "README.md").read_text(encoding="utf-8").split())
    missing = [v.hex() for v in vectors if v.hex() not in readme]
    assert missing == []
