"""``PeerLink``, the till-to-till link on the LAN, sans I/O: two links wired in memory.

``LanPair.pump`` moves what each end queued into the other until both are quiet, the way
``tests/peer/test_sync_engine.py`` wires a ``ClientLink`` to a ``RelayLink``.  Every
refusal is checked three ways: the event the refusing end reports (``LinkFailed`` with
its code), the ``error`` frame it sends (and nothing else: a refused end signs nothing),
and its state afterwards (closed, or ready again for the non-fatal errors).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.doubles import deliver
from tillsync.peer.cert import Certificate
from tillsync.peer.identity import DeviceKey, verify_signature
from tillsync.peer.log import GENESIS_PREV, Entry, seal
from tillsync.peer.sync.engine import (
    CertsReceived,
    DocMessage,
    EntriesReceived,
    Event,
    HaveReceived,
    Ingested,
    LinkFailed,
    PeerAuthenticated,
    PeerLink,
    ReceiptsReceived,
    RemoteError,
    peer_transcript,
)
from tillsync.peer.sync.frames import MAX_BATCH, PROTOCOL_VERSION, decode, encode

STORE = "shop-1"
DIALER, LISTENER = "till-a-3f1c8a52", "till-b-9a430c2f"
NONCE_D, NONCE_L = bytes(range(32)), bytes(range(100, 132))
# Made once: the property below builds many links and Ed25519 keys are not free.
RELAY_KEY, KEY_A, KEY_B, ROGUE_KEY = (DeviceKey.generate() for _ in range(4))
ISSUER = RELAY_KEY.public_bytes


def cert(device: str, key: DeviceKey, *, store: str = STORE, issuer: DeviceKey = RELAY_KEY,
         name: str = "Till") -> bytes:
    return Certificate.issue(issuer, store=store, device=device, name=name, role="till",
                             public_key=key.public_bytes).raw


CERT_A = cert(DIALER, KEY_A, name="Till A")
CERT_B = cert(LISTENER, KEY_B, name="Till B")
CERT_A_OTHER_STORE = cert(DIALER, KEY_A, store="shop-2")
CERT_B_OTHER_STORE = cert(LISTENER, KEY_B, store="shop-2")
CERT_A_ROGUE = cert(DIALER, KEY_A, issuer=ROGUE_KEY)  # not signed by the store's relay
CERT_B_ROGUE = cert(LISTENER, KEY_B, issuer=ROGUE_KEY)


def dialer(*, store: str = STORE, cert: bytes = CERT_A, key: DeviceKey = KEY_A,
           issuer: bytes = ISSUER, nonce: bytes = NONCE_D) -> PeerLink:
    return PeerLink(store=store, cert=cert, key=key, issuer=issuer, nonce=nonce, dialer=True)


def listener(*, store: str = STORE, cert: bytes = CERT_B, key: DeviceKey = KEY_B,
             issuer: bytes = ISSUER, nonce: bytes = NONCE_L) -> PeerLink:
    return PeerLink(store=store, cert=cert, key=key, issuer=issuer, nonce=nonce, dialer=False)


@dataclass
class LanPair:
    dialer: PeerLink
    listener: PeerLink
    dialer_events: list[Event] = field(default_factory=list)
    listener_events: list[Event] = field(default_factory=list)
    sent_by_dialer: list[bytes] = field(default_factory=list)
    sent_by_listener: list[bytes] = field(default_factory=list)

    def pump(self) -> None:
        """Deliver frames both ways until neither end has anything left to send."""
        deliver(self.dialer, self.listener, self.dialer_events, self.listener_events,
                self.sent_by_dialer, self.sent_by_listener)

    def take(self) -> tuple[list[Event], list[Event]]:
        """The events of (dialer, listener) since the last call."""
        out = self.dialer_events, self.listener_events
        self.dialer_events, self.listener_events = [], []
        return out


def connect(d: PeerLink | None = None, lis: PeerLink | None = None) -> LanPair:
    pair = LanPair(d or dialer(), lis or listener())
    pair.dialer.start()
    pair.pump()
    return pair


def ready_pair() -> LanPair:
    pair = connect()
    assert pair.dialer.state == pair.listener.state == "ready"
    pair.take()
    return pair


def frame_of(data: bytes) -> dict[str, Any]:
    return dict(msgpack.unpackb(data, raw=False))


def types(frames: list[bytes]) -> list[str]:
    return [frame_of(f)["t"] for f in frames]


def only_error(frames: list[bytes]) -> dict[str, Any]:
    assert len(frames) == 1, [frame_of(f) for f in frames]
    error = frame_of(frames[0])
    assert error["t"] == "error"
    return error


def codes(events: list[Event]) -> list[tuple[type, str]]:
    return [(type(e), getattr(e, "code", "")) for e in events]


def refused(link: PeerLink, frame: bytes | str, code: str) -> dict[str, Any]:
    """Feed one frame; check it is refused with ``code`` and nothing else; return the
    error frame sent back."""
    link.events_received()
    link.data_to_send()
    link.receive_data(frame)
    assert codes(link.events_received()) == [(LinkFailed, code)]
    error = only_error(link.data_to_send())
    assert error["code"] == code
    return error


def transcript_by_hand(store: str, dialer_id: str, listener_id: str, nonce_d: bytes,
                       nonce_l: bytes) -> bytes:
    packed = msgpack.packb([store, dialer_id, listener_id, nonce_d, nonce_l], use_bin_type=True)
    return hashlib.sha256(b"tillsync/peer/v2" + packed).digest()


def chain(n: int, *, device: str = DIALER, key: DeviceKey = KEY_A) -> list[Entry]:
    out: list[Entry] = []
    prev = GENESIS_PREV
    for seq in range(1, n + 1):
        entry = seal(key, body={"product_id": "bread", "direction": "in", "qty": str(seq),
                                "reason": "delivery"},
                     client_id=str(uuid.UUID(int=seq, version=4)), device_id=device, seq=seq,
                     prev=prev, kind="stock_move", client_created_at="2024-05-01T09:00:00.000Z",
                     ticket=None)
        out.append(entry)
        prev = entry.hash
    return out


def wire(entry: Entry) -> list[Any]:
    return [entry.client_id, entry.device_id, entry.seq, entry.prev, entry.kind,
            entry.client_created_at, entry.ticket, entry.body_bytes, entry.sig]


# -- the handshake --------------------------------------------------------------------


def test_full_handshake_both_ends_ready_each_with_the_others_certificate() -> None:
    pair = connect()
    dialer_events, listener_events = pair.take()

    assert pair.dialer.state == pair.listener.state == "ready"
    assert dialer_events == [PeerAuthenticated(Certificate.load(CERT_B, ISSUER))]
    assert listener_events == [PeerAuthenticated(Certificate.load(CERT_A, ISSUER))]
    got_b = dialer_events[0].cert  # type: ignore[attr-defined]
    got_a = listener_events[0].cert  # type: ignore[attr-defined]
    assert (got_b.device, got_b.name, got_b.public_key, got_b.raw) == \
        (LISTENER, "Till B", KEY_B.public_bytes, CERT_B)
    assert (got_a.device, got_a.name, got_a.public_key, got_a.raw) == \
        (DIALER, "Till A", KEY_A.public_bytes, CERT_A)
    assert pair.dialer.peer == got_b and pair.listener.peer == got_a
    assert types(pair.sent_by_dialer) == ["peer_hello", "auth"]
    assert types(pair.sent_by_listener) == ["peer_challenge"]


def test_handshake_frames_and_signatures_are_the_documented_ones() -> None:
    pair = connect()
    hello, auth = (frame_of(f) for f in pair.sent_by_dialer)
    challenge = frame_of(pair.sent_by_listener[0])
    assert hello == {"t": "peer_hello", "v": PROTOCOL_VERSION, "store": STORE, "cert": CERT_A,
                     "nonce": NONCE_D}
    assert challenge["cert"] == CERT_B and challenge["nonce"] == NONCE_L
    proof = transcript_by_hand(STORE, DIALER, LISTENER, NONCE_D, NONCE_L)
    assert proof == peer_transcript(STORE, DIALER, LISTENER, NONCE_D, NONCE_L)
    assert verify_signature(KEY_B.public_bytes, challenge["sig"], b"listener" + proof)
    assert verify_signature(KEY_A.public_bytes, auth["sig"], b"dialer" + proof)
    # Domain separation: neither signature passes as the other role's.
    assert not verify_signature(KEY_B.public_bytes, challenge["sig"], b"dialer" + proof)
    assert not verify_signature(KEY_A.public_bytes, auth["sig"], b"listener" + proof)
    for frame in pair.sent_by_dialer + pair.sent_by_listener:
        decode(frame)


def test_the_constructor_refuses_a_certificate_that_is_not_its_own_stores() -> None:
    from tillsync.peer.cert import CertificateError

    with pytest.raises(CertificateError):
        dialer(cert=CERT_A_OTHER_STORE)
    with pytest.raises(CertificateError):
        listener(cert=CERT_B_ROGUE)


def assert_listener_refused(pair: LanPair, code: str) -> None:
    """The listener refused the hello: it reported ``code``, sent one error frame and no
    challenge (it signed nothing), closed; the dialer learnt why and closed too."""
    dialer_events, listener_events = pair.take()
    assert codes(listener_events) == [(LinkFailed, code)]
    assert types(pair.sent_by_listener) == ["error"]
    error = frame_of(pair.sent_by_listener[0])
    assert (error["code"], error["fatal"]) == (code, True)
    assert pair.listener.closed and pair.listener.peer is None
    assert codes(dialer_events) == [(RemoteError, code)]
    assert pair.dialer.closed
    assert types(pair.sent_by_dialer) == ["peer_hello"]  # no auth was ever sent


def assert_dialer_refused(pair: LanPair, code: str) -> None:
    """The dialer refused the challenge: no auth, one error frame, both ends closed."""
    dialer_events, listener_events = pair.take()
    assert codes(dialer_events) == [(LinkFailed, code)]
    assert types(pair.sent_by_dialer) == ["peer_hello", "error"]
    assert frame_of(pair.sent_by_dialer[1])["code"] == code
    assert pair.dialer.closed
    assert codes(listener_events) == [(RemoteError, code)]
    assert pair.listener.closed
    assert not any(isinstance(e, PeerAuthenticated) for e in dialer_events + listener_events)


def test_a_till_of_another_store_is_refused_wrong_store() -> None:
    pair = connect(dialer(store="shop-2", cert=CERT_A_OTHER_STORE))
    assert_listener_refused(pair, "wrong_store")


def test_a_certificate_of_another_store_under_this_stores_name_is_refused() -> None:
    """The peer claims this store but shows a certificate the relay issued for another."""
    lis = listener()
    error = refused(lis, encode("peer_hello", v=PROTOCOL_VERSION, store=STORE,
                                cert=CERT_A_OTHER_STORE, nonce=NONCE_D), "bad_certificate")
    assert "another store" in error["message"]
    assert lis.closed and lis.peer is None


def test_a_listener_showing_a_certificate_of_another_store_is_refused() -> None:
    d = dialer()
    d.start()
    d.data_to_send()
    error = refused(d, encode("peer_challenge", cert=CERT_B_OTHER_STORE, nonce=NONCE_L,
                              sig=KEY_B.sign(b"listener" + peer_transcript(
                                  STORE, DIALER, LISTENER, NONCE_D, NONCE_L))),
                    "bad_certificate")
    assert "another store" in error["message"]
    assert d.closed


def test_a_dialer_certificate_signed_by_another_key_is_refused() -> None:
    pair = connect(dialer(cert=CERT_A_ROGUE, issuer=ROGUE_KEY.public_bytes))
    assert_listener_refused(pair, "bad_certificate")


def test_a_listener_certificate_signed_by_another_key_is_refused() -> None:
    d = dialer()
    d.start()
    d.data_to_send()
    proof = peer_transcript(STORE, DIALER, LISTENER, NONCE_D, NONCE_L)
    error = refused(d, encode("peer_challenge", cert=CERT_B_ROGUE, nonce=NONCE_L,
                              sig=KEY_B.sign(b"listener" + proof)), "bad_certificate")
    assert "not signed by this store's key" in error["message"]
    assert d.closed and d.peer is None


ISSUED = 1_800_000_000  # a fixed "now" for certificates with a validity


def valid_cert(device: str, key: DeviceKey, name: str) -> bytes:
    return Certificate.issue(RELAY_KEY, store=STORE, device=device, name=name, role="till",
                             public_key=key.public_bytes, now=ISSUED).raw


def test_a_certificate_is_valid_from_an_hour_before_its_issue_for_ninety_days() -> None:
    c = Certificate.load(valid_cert(DIALER, KEY_A, "Till A"), ISSUER, now=ISSUED)
    assert (c.not_before, c.not_after) == (ISSUED - 3600, ISSUED + 90 * 86400)
    Certificate.load(c.raw, ISSUER, now=ISSUED - 3600)
    Certificate.load(c.raw, ISSUER, now=ISSUED + 90 * 86400)


@pytest.mark.parametrize("at", [ISSUED + 90 * 86400 + 1, ISSUED - 3601],
                         ids=["expired", "not yet valid"])
def test_a_dialer_whose_certificate_is_out_of_its_validity_is_refused(at: int) -> None:
    lis = PeerLink(store=STORE, cert=CERT_B, key=KEY_B, issuer=ISSUER, nonce=NONCE_L,
                   dialer=False, now=at)
    error = refused(lis, encode("peer_hello", v=PROTOCOL_VERSION, store=STORE,
                                cert=valid_cert(DIALER, KEY_A, "Till A"), nonce=NONCE_D),
                    "bad_certificate")
    assert "Till A" in error["message"]
    assert ("expired on" if at > ISSUED else "not valid before") in error["message"]


def test_a_listener_whose_certificate_has_expired_is_refused_by_the_dialer() -> None:
    d = PeerLink(store=STORE, cert=CERT_A, key=KEY_A, issuer=ISSUER, nonce=NONCE_D,
                 dialer=True, now=ISSUED + 91 * 86400)
    lis = listener(cert=valid_cert(LISTENER, KEY_B, "Till B"))
    pair = connect(d, lis)
    assert d.closed and d.peer is None and lis.state != "ready"
    assert any(frame_of(f).get("code") == "bad_certificate" for f in pair.sent_by_dialer)


def test_within_its_validity_a_certificate_links_and_one_without_limits_always_does() -> None:
    d = PeerLink(store=STORE, cert=valid_cert(DIALER, KEY_A, "Till A"), key=KEY_A,
                 issuer=ISSUER, nonce=NONCE_D, dialer=True, now=ISSUED + 86400)
    lis = PeerLink(store=STORE, cert=CERT_B, key=KEY_B, issuer=ISSUER, nonce=NONCE_L,
                   dialer=False, now=ISSUED + 86400)
    pair = connect(d, lis)
    assert pair.dialer.state == pair.listener.state == "ready"


@pytest.mark.parametrize("raw", [b"\x92\xc4\x01x", b"\xc1", msgpack.packb([b"", b""]),
                                 msgpack.packb({"a": 1, "b": 2}), msgpack.packb(["ab", 2])],
                         ids=["short array", "reserved byte", "empty parts", "a map",
                              "wrong types"])
def test_a_certificate_that_does_not_parse_is_refused(raw: bytes) -> None:
    refused(listener(), encode("peer_hello", v=PROTOCOL_VERSION, store=STORE, cert=raw,
                               nonce=NONCE_D), "bad_certificate")


def test_a_certificate_with_a_forged_field_is_refused() -> None:
    body, sig = msgpack.unpackb(CERT_A, raw=False)
    fields = msgpack.unpackb(body, raw=False)
    fields["public_key"] = ROGUE_KEY.public_bytes  # keep the relay's signature, swap the key
    forged = msgpack.packb([msgpack.packb(fields, use_bin_type=True), sig], use_bin_type=True)
    refused(listener(), encode("peer_hello", v=PROTOCOL_VERSION, store=STORE, cert=forged,
                               nonce=NONCE_D), "bad_certificate")


def test_a_link_to_itself_is_refused_on_both_sides() -> None:
    pair = connect(lis=listener(cert=CERT_A, key=KEY_A))
    assert_listener_refused(pair, "self")
    # ... and a dialer whose challenge comes back with its own certificate.
    d = dialer()
    d.start()
    d.data_to_send()
    refused(d, encode("peer_challenge", cert=CERT_A, nonce=NONCE_L,
                      sig=KEY_A.sign(b"listener" + peer_transcript(
                          STORE, DIALER, DIALER, NONCE_D, NONCE_L))), "self")
    assert d.closed


def test_a_listener_without_the_key_of_its_certificate_fails_auth() -> None:
    """Certificates are public: showing another till's proves nothing without its key."""
    pair = connect(lis=listener(key=ROGUE_KEY))
    assert_dialer_refused(pair, "auth_failed")


def test_a_dialer_without_the_key_of_its_certificate_fails_auth() -> None:
    pair = connect(dialer(key=ROGUE_KEY))
    dialer_events, listener_events = pair.take()
    assert codes(listener_events) == [(LinkFailed, "auth_failed")]
    assert pair.listener.closed
    assert types(pair.sent_by_listener) == ["peer_challenge", "error"]
    # The dialer, which did see a good challenge, is told and closes.
    assert [type(e) for e in dialer_events] == [PeerAuthenticated, RemoteError]
    assert pair.dialer.closed


def test_a_challenge_signed_over_another_transcript_fails_auth() -> None:
    d = dialer()
    d.start()
    d.data_to_send()
    wrong = peer_transcript(STORE, LISTENER, DIALER, NONCE_L, NONCE_D)  # roles swapped
    refused(d, encode("peer_challenge", cert=CERT_B, nonce=NONCE_L,
                      sig=KEY_B.sign(b"listener" + wrong)), "auth_failed")
    assert d.closed


def test_an_auth_carrying_the_listeners_own_signature_fails() -> None:
    """Reflection: the listener's challenge signature sent back as the dialer's auth."""
    pair = LanPair(dialer(), listener())
    pair.dialer.start()
    hello = pair.dialer.data_to_send()[0]
    lis = pair.listener
    lis.receive_data(hello)
    challenge = frame_of(lis.data_to_send()[0])
    refused(lis, encode("auth", sig=challenge["sig"]), "auth_failed")
    assert lis.closed


def test_a_recorded_challenge_replayed_to_a_new_dialer_nonce_fails() -> None:
    recorded = connect()
    challenge = recorded.sent_by_listener[0]

    d = dialer(nonce=bytes(32))  # a new session: a fresh nonce
    d.start()
    d.data_to_send()
    refused(d, challenge, "auth_failed")
    assert d.closed


def test_a_recorded_auth_replayed_to_a_new_listener_nonce_fails() -> None:
    recorded = connect()
    hello, auth = recorded.sent_by_dialer

    lis = listener(nonce=bytes(range(200, 232)))
    lis.receive_data(hello)
    assert lis.state == "challenged"
    lis.data_to_send()
    refused(lis, auth, "auth_failed")
    assert lis.closed and lis.events_received() == []


def test_the_same_recording_replayed_to_the_same_nonces_does_pass() -> None:
    """The control for the two replay tests: it is the nonce that makes them fail."""
    recorded = connect()
    hello, auth = recorded.sent_by_dialer
    lis = listener()
    lis.receive_data(hello)
    lis.receive_data(auth)
    assert lis.state == "ready"
    assert [type(e) for e in lis.events_received()] == [PeerAuthenticated]


@pytest.mark.parametrize("v", [0, 1, PROTOCOL_VERSION + 1, 2**40])
def test_a_hello_of_another_version_is_refused(v: int) -> None:
    lis = listener()
    error = refused(lis, encode("peer_hello", v=v, store=STORE, cert=CERT_A, nonce=NONCE_D),
                    "version")
    assert error["fatal"] is True and str(PROTOCOL_VERSION) in error["message"]
    assert lis.closed


# -- frames out of turn, and garbage --------------------------------------------------


def link_in(side: str, state: str) -> PeerLink:
    """A link of ``side`` in ``state``, with the fixed nonces, nothing left to read."""
    if side == "dialer":
        link = dialer()
        if state in ("hello_sent", "ready"):
            pair = LanPair(link, listener())
            link.start()
            if state == "ready":
                pair.pump()
    else:
        link = listener()
        if state in ("challenged", "ready"):
            pair = LanPair(dialer(), link)
            pair.dialer.start()
            if state == "challenged":
                link.receive_data(pair.dialer.data_to_send()[0])
            else:
                pair.pump()
    link.events_received()
    link.data_to_send()
    assert link.state == state, (side, state, link.state)
    return link


PEER_HELLO = encode("peer_hello", v=PROTOCOL_VERSION, store=STORE, cert=CERT_A, nonce=NONCE_D)
PEER_CHALLENGE = encode("peer_challenge", cert=CERT_B, nonce=NONCE_L, sig=bytes(64))
AUTH = encode("auth", sig=bytes(64))
HAVE = encode("have", heads={}, receipts_head=0)
CERTS = encode("certs", certs=[CERT_A])
ENTRIES = encode("entries", entries=[])
INGESTED = encode("ingested", heads={}, count=0, receipts_head=0)
RECEIPTS = encode("receipts", receipts=[], head=0)
DOC = encode("doc", m=b"\x42")
# the relay link's frames have no place on a LAN link
HELLO = encode("hello", v=PROTOCOL_VERSION, store=STORE, device=DIALER, nonce=NONCE_D,
               receipts_after=0, doc_empty=False)
CHALLENGE = encode("challenge", nonce=NONCE_L, relay_key=ISSUER, sig=bytes(64))
WELCOME = encode("welcome", heads={}, receipts_head=0, cert=CERT_B, revoked=[])
SNAPSHOT = encode("doc_snapshot", data=b"\x00")
ENROLL = encode("enroll", v=PROTOCOL_VERSION, code="ABCDE", device=DIALER, name="x",
                public_key=KEY_A.public_bytes)

OUT_OF_TURN = [
    ("dialer", "new", PEER_HELLO), ("dialer", "new", PEER_CHALLENGE), ("dialer", "new", HAVE),
    ("dialer", "hello_sent", PEER_HELLO), ("dialer", "hello_sent", AUTH),
    ("dialer", "hello_sent", HAVE), ("dialer", "hello_sent", ENTRIES),
    ("dialer", "hello_sent", DOC), ("dialer", "hello_sent", CERTS),
    ("listener", "new", PEER_CHALLENGE), ("listener", "new", AUTH),
    ("listener", "new", HAVE), ("listener", "new", ENTRIES), ("listener", "new", DOC),
    ("listener", "challenged", PEER_HELLO), ("listener", "challenged", PEER_CHALLENGE),
    ("listener", "challenged", HAVE), ("listener", "challenged", ENTRIES),
    ("listener", "challenged", RECEIPTS), ("listener", "challenged", DOC),
    *[(side, "ready", frame) for side in ("dialer", "listener")
      for frame in (PEER_HELLO, PEER_CHALLENGE, AUTH, HELLO, CHALLENGE, WELCOME, SNAPSHOT,
                    ENROLL)],
    ("listener", "new", HELLO), ("listener", "new", ENROLL),
    ("dialer", "hello_sent", CHALLENGE), ("dialer", "hello_sent", WELCOME),
]


@pytest.mark.parametrize(("side", "state", "frame"), OUT_OF_TURN,
                         ids=[f"{s}-{st_}-{frame_of(f)['t']}" for s, st_, f in OUT_OF_TURN])
def test_a_frame_out_of_turn_is_refused_unexpected(side: str, state: str, frame: bytes) -> None:
    link = link_in(side, state)
    error = refused(link, frame, "unexpected")
    assert error["fatal"] is True
    assert link.closed


def _packed(value: object) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


GARBAGE: list[tuple[str, bytes | str, str]] = [
    ("empty", b"", "malformed"),
    ("reserved byte", b"\xc1", "malformed"),
    ("random bytes", bytes.fromhex("deadbeef00ff"), "malformed"),
    ("text frame", "peer_hello", "malformed"),
    ("truncated", PEER_HELLO[:-7], "malformed"),
    ("trailing bytes", PEER_HELLO + b"\x00", "malformed"),
    ("not a map", _packed(["peer_hello"]), "malformed"),
    ("no t", _packed({"store": STORE}), "malformed"),
    ("unknown type", _packed({"t": "gossip"}), "unknown_type"),
    ("missing field", _packed({"t": "peer_hello", "v": 2, "store": STORE, "cert": CERT_A}),
     "bad_field"),
    ("extra field", _packed({"t": "have", "heads": {}, "receipts_head": 0, "x": 1}),
     "bad_field"),
    ("cert too long", _packed({"t": "peer_hello", "v": 2, "store": STORE,
                               "cert": bytes(2049), "nonce": NONCE_D}), "bad_field"),
    ("nonce too short", _packed({"t": "peer_hello", "v": 2, "store": STORE, "cert": CERT_A,
                                 "nonce": bytes(31)}), "bad_field"),
]


@pytest.mark.parametrize("where", [("dialer", "hello_sent"), ("listener", "new"),
                                   ("listener", "challenged"), ("dialer", "ready"),
                                   ("listener", "ready")], ids=lambda w: "-".join(w))
@pytest.mark.parametrize(("frame", "code"), [(f, c) for _, f, c in GARBAGE],
                         ids=[name for name, _, _ in GARBAGE])
def test_garbage_is_refused_with_an_error_frame_and_the_link_closed(
    where: tuple[str, str], frame: bytes | str, code: str,
) -> None:
    link = link_in(*where)
    error = refused(link, frame, code)
    assert error["fatal"] is True
    assert link.closed
    # A closed link ignores whatever comes next, good or bad.
    link.receive_data(HAVE)
    link.receive_data(b"\xc1")
    assert link.events_received() == [] and link.data_to_send() == []


# -- after the handshake --------------------------------------------------------------


def test_have_certs_entries_ingested_receipts_doc_give_their_events_both_ways() -> None:
    pair = ready_pair()
    entries = chain(3)
    receipts: list[dict[str, Any]] = [{"client_id": entries[0].client_id, "server_seq": 1,
                                       "status": "accepted", "warnings": []}]
    for a, b_events in ((pair.dialer, 1), (pair.listener, 0)):
        a.send_have({DIALER: 3, LISTENER: 7}, 5)
        a.send_certs([CERT_A, CERT_B])
        a.send_entries(entries)
        a.send_ingested({DIALER: 3}, 3, 6)
        a.send_receipts(receipts, 1)
        a.send_doc(b"\x42\x01")
        pair.pump()
        got = pair.take()[b_events]
        assert got == [
            HaveReceived({DIALER: 3, LISTENER: 7}, 5),
            CertsReceived([CERT_A, CERT_B]),
            EntriesReceived(entries),
            Ingested({DIALER: 3}, 3, 6),
            ReceiptsReceived(receipts, 1),
            DocMessage(b"\x42\x01"),
        ]
        received = got[2].entries  # type: ignore[attr-defined]
        assert [e.hash for e in received] == [e.hash for e in entries]
        assert all(e.signature_valid(KEY_A.public_bytes) for e in received)
    assert pair.dialer.state == pair.listener.state == "ready"


def test_empty_have_certs_and_entries_are_allowed() -> None:
    pair = ready_pair()
    pair.dialer.send_have({}, 0)
    pair.dialer.send_certs([])
    pair.dialer.send_entries([])
    pair.pump()
    assert pair.take()[1] == [HaveReceived({}, 0), CertsReceived([]), EntriesReceived([])]


@pytest.mark.parametrize("heads", [
    {DIALER: "3"}, {DIALER: True}, {DIALER: None}, {DIALER: 1.5}, {DIALER: [1]},
    {b"till-a": 3}, {DIALER: 2**53}, {DIALER: 2**64 - 1}, {"d" * 201: 3}, {"": 3},
], ids=["str seq", "bool seq", "nil seq", "float seq", "list seq", "bin key",
        "seq past 2^53 - 1", "seq of 64 bits", "overlong key", "empty key"])
@pytest.mark.parametrize("t", ["have", "ingested"])
def test_bad_heads_are_refused_bad_field(t: str, heads: dict[Any, Any]) -> None:
    link = link_in("listener", "ready")
    extra: dict[str, Any] = {"count": 0} if t == "ingested" else {}
    error = refused(link, _packed({"t": t, "heads": heads, "receipts_head": 0, **extra}),
                    "bad_field")
    assert error["fatal"] is True and link.closed


def test_a_negative_head_is_refused_bad_field() -> None:
    """messages.json: a head is a ``count`` (minimum 0), like every seq on the wire."""
    link = link_in("listener", "ready")
    refused(link, _packed({"t": "have", "heads": {DIALER: -1}, "receipts_head": 0}),
            "bad_field")


def test_heads_not_a_map_and_a_negative_receipts_head_are_refused() -> None:
    refused(link_in("dialer", "ready"), _packed({"t": "have", "heads": [], "receipts_head": 0}),
            "bad_field")
    refused(link_in("dialer", "ready"), _packed({"t": "have", "heads": {}, "receipts_head": -1}),
            "bad_field")


def test_a_certs_frame_with_a_non_certificate_is_refused() -> None:
    link = link_in("dialer", "ready")
    refused(link, _packed({"t": "certs", "certs": [CERT_A, "not bytes"]}), "bad_field")
    assert link.closed


def test_a_receipt_that_is_not_a_map_is_refused() -> None:
    link = link_in("listener", "ready")
    refused(link, _packed({"t": "receipts", "receipts": [{"server_seq": 1}, [1]], "head": 1}),
            "bad_field")
    assert link.closed


@pytest.mark.parametrize("item", [
    "entry", [1, 2, 3], wire(chain(1)[0])[:8],
    [*wire(chain(1)[0])[:2], "1", *wire(chain(1)[0])[3:]],  # seq as str
    [*wire(chain(1)[0])[:3], bytes(31), *wire(chain(1)[0])[4:]],  # short prev
    [*wire(chain(1)[0])[:8], bytes(63)],  # short sig
    [*wire(chain(1)[0])[:6], "T" * 100_000, *wire(chain(1)[0])[7:]],  # a ticket of 100,000
    ["c" * 65, *wire(chain(1)[0])[1:]],  # a client_id over 64 characters
    [*wire(chain(1)[0])[:4], "k" * 65, *wire(chain(1)[0])[5:]],  # a kind over 64
], ids=["str", "short array", "8 fields", "str seq", "short prev", "short sig", "long ticket",
        "long client_id", "long kind"])
def test_a_badly_shaped_entry_is_a_non_fatal_bad_field(item: object) -> None:
    link = link_in("listener", "ready")
    error = refused(link, _packed({"t": "entries", "entries": [wire(chain(1)[0]), item]}),
                    "bad_field")
    assert error["fatal"] is False
    assert link.state == "ready"  # the link goes on; nothing of that frame was reported
    link.receive_data(DOC)
    assert link.events_received() == [DocMessage(b"\x42")]


def test_more_than_max_batch_entries_in_one_frame_is_refused() -> None:
    item = wire(chain(1)[0])
    link = link_in("dialer", "ready")
    refused(link, _packed({"t": "entries", "entries": [item] * (MAX_BATCH + 1)}), "bad_field")


def test_a_remote_error_is_reported_and_a_fatal_one_closes_the_link() -> None:
    link = link_in("listener", "ready")
    link.receive_data(encode("error", code="bad_document", message="no", fatal=False))
    assert link.events_received() == [RemoteError("bad_document", "no", False)]
    assert link.state == "ready" and link.data_to_send() == []
    link.receive_data(encode("error", code="bad_entry", message="forged", fatal=True))
    assert link.events_received() == [RemoteError("bad_entry", "forged", True)]
    assert link.closed and link.data_to_send() == []
    link.receive_data(HAVE)
    assert link.events_received() == []


def test_fail_sends_an_error_and_closes_only_if_fatal() -> None:
    link = link_in("dialer", "ready")
    link.fail("bad_document", "the document sync message does not apply", fatal=False)
    assert only_error(link.data_to_send())["fatal"] is False and link.state == "ready"
    link.fail("bad_entry", "forwarded entries do not verify")
    error = only_error(link.data_to_send())
    assert (error["code"], error["fatal"]) == ("bad_entry", True) and link.closed


# -- property: no input makes a link raise --------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False) | st.text(max_size=10) | st.binary(max_size=40))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
_CERTS = [CERT_A, CERT_B, CERT_A_OTHER_STORE, CERT_B_OTHER_STORE, CERT_A_ROGUE, CERT_B_ROGUE]
_PEER_TYPES = ["peer_hello", "peer_challenge", "auth", "have", "certs", "entries", "ingested",
               "receipts", "doc", "error", "hello", "welcome", "revoked"]


def _plausible(name: str) -> st.SearchStrategy[Any]:
    """Values that pass (or nearly pass) the check of field ``name``."""
    if name == "cert":
        return st.sampled_from(_CERTS) | st.binary(min_size=0, max_size=60)
    if name in ("certs", "revoked"):
        return st.lists(st.sampled_from(_CERTS) | st.binary(max_size=8) | _scalars, max_size=3)
    if name == "nonce":
        return st.sampled_from([NONCE_D, NONCE_L]) | st.binary(min_size=31, max_size=33)
    if name == "sig":
        return st.binary(min_size=63, max_size=65)
    if name == "store":
        return st.sampled_from([STORE, "shop-2", ""])
    if name in ("v", "receipts_head", "count", "head", "receipts_after"):
        return st.integers(-1, 3)
    if name == "heads":
        return st.dictionaries(st.sampled_from([DIALER, LISTENER, "x"]) | st.binary(max_size=2),
                               st.integers(-1, 9) | _scalars, max_size=3)
    if name == "entries":
        good = [wire(e) for e in chain(2)]
        return st.lists(st.sampled_from(good) | st.lists(_scalars, min_size=9, max_size=9)
                        | _values, max_size=3)
    if name == "receipts":
        return st.lists(st.dictionaries(st.text(max_size=4), _scalars, max_size=2) | _values,
                        max_size=3)
    if name == "m":
        return st.binary(max_size=20)
    if name in ("code", "message", "device"):
        return st.text(max_size=10)
    if name in ("fatal", "doc_empty"):
        return st.booleans()
    return _values


_FIELDS = {"peer_hello": ["v", "store", "cert", "nonce"],
           "peer_challenge": ["cert", "nonce", "sig"], "auth": ["sig"],
           "have": ["heads", "receipts_head"], "certs": ["certs"],
           "entries": ["entries"], "ingested": ["heads", "count", "receipts_head"],
           "receipts": ["receipts", "head"], "doc": ["m"], "error": ["code", "message", "fatal"],
           "hello": ["v", "store", "device", "nonce", "receipts_after", "doc_empty"],
           "welcome": ["heads", "receipts_head", "cert", "revoked"],
           "revoked": ["revoked"]}


@st.composite
def _near_valid(draw: st.DrawFn) -> bytes:
    t = draw(st.sampled_from(_PEER_TYPES))
    fields = {n: draw(_plausible(n)) for n in _FIELDS[t] if draw(st.integers(0, 9))}
    if draw(st.integers(0, 5)) == 0:
        fields.update(draw(st.dictionaries(st.text(max_size=4), _values, max_size=1)))
    return _packed({"t": t, **fields})


def _recorded_session() -> tuple[list[bytes], list[bytes]]:
    """The frames of a real session with the fixed nonces (so a replay may progress):
    those of the handshake, and those after it."""
    pair = connect()
    handshake = pair.sent_by_dialer + pair.sent_by_listener
    pair.dialer.send_have({DIALER: 2}, 0)
    pair.dialer.send_certs([CERT_A])
    pair.dialer.send_entries(chain(2))
    pair.listener.send_ingested({DIALER: 2}, 2, 0)
    pair.listener.send_receipts([{"server_seq": 1}], 1)
    pair.listener.send_doc(b"\x00")
    pair.pump()
    return handshake, [f for f in pair.sent_by_dialer + pair.sent_by_listener
                       if f not in handshake]


_HANDSHAKE, _AFTER = _recorded_session()
_frames = st.one_of(
    st.binary(max_size=100),
    st.text(max_size=10),
    _values.map(_packed),
    _near_valid(),
    st.sampled_from(_AFTER),
    st.sampled_from(_HANDSHAKE),  # often enough for a link to reach ready, then go on
)
_WHERE = [("dialer", "new"), ("dialer", "hello_sent"), ("dialer", "ready"),
          ("listener", "new"), ("listener", "challenged"), ("listener", "ready")]


def _rest_of_handshake(where: tuple[str, str]) -> list[bytes]:
    """The recorded frames that take a link in state ``where`` to ready."""
    hello, auth, challenge = _HANDSHAKE
    return {("listener", "new"): [hello, auth], ("listener", "challenged"): [auth],
            ("dialer", "hello_sent"): [challenge]}.get(where, [])


@given(st.sampled_from(_WHERE), st.booleans(), st.lists(_frames, min_size=1, max_size=5))
def test_no_input_makes_a_peer_link_raise(where: tuple[str, str], complete: bool,
                                          frames: list[bytes | str]) -> None:
    link = link_in(*where)
    if complete:  # half the time the random frames come after a good handshake
        frames = [*_rest_of_handshake(where), *frames]
    for frame in frames:
        was_closed, was_ready = link.closed, link.state == "ready"
        link.receive_data(frame)
        events, out = link.events_received(), link.data_to_send()
        if was_closed:
            assert events == [] and out == []
            continue
        decoded = [decode(f) for f in out]  # whatever a link sends is a valid frame
        failed = [e for e in events if isinstance(e, LinkFailed)]
        errors = [d for d in decoded if d["t"] == "error"]
        # Every frame is answered: an event, an error frame, or (a good hello) a challenge.
        assert events or out, "the frame was swallowed without a trace"
        assert len(failed) <= 1 and len(errors) == len(failed)
        if failed:
            assert failed == events  # a refused frame reports nothing else
            assert errors[0]["code"] == failed[0].code
            assert link.closed == errors[0]["fatal"]
            assert [d["t"] for d in decoded] == ["error"]  # and sends nothing else
        if link.state == "ready" and not was_ready:
            # Only a proven peer makes a link ready, and it says who that is.
            assert [type(e) for e in events] == [PeerAuthenticated]
            assert link.peer is not None and link.peer.device != link.device
            assert link.peer.raw in (CERT_A, CERT_B)
        for event in events:
            if isinstance(event, PeerAuthenticated):
                assert link.state == "ready"
