"""The state of one link, sans I/O: bytes in, events and bytes out.

A link is either the device end (``ClientLink``) or the relay end (``RelayLink``).  It
knows the handshake and which message may come when; it has no sockets, no clock and
no randomness (nonces are given to it), and it never touches storage: when the relay
must look a device up or ingest a batch, the link hands out an event and the I/O layer
answers by calling a method.  Use::

    link.receive_data(frame)
    for event in link.events_received(): ...
    for frame in link.data_to_send(): await websocket.send(frame)

Handshake (both sides prove their keys over the same transcript)::

    device                                   relay
      hello {v, store, device, nonce_d, receipts_after, doc_empty}  ->
                      <-  challenge {nonce_r, relay_key, sig_r(transcript)}
      auth {sig_d(transcript)}                ->
                      <-  welcome {heads, receipts_head, cert, revoked}

then, in any order: ``entries`` -> / <- ``ingested``, <- ``receipts``, ``doc`` <->,
<- ``doc_snapshot``, ``error`` <->, and files: ``file_offer`` ->, <- ``file_want`` /
``file_have`` / ``file_refused``, ``file_chunk`` -> (``peer.sync.files``).
Enrollment is its own short link: ``enroll`` -> / <- ``enrolled``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from tillsync.peer.cert import Certificate, CertificateError
from tillsync.peer.identity import DeviceKey, verify_signature
from tillsync.peer.log import Entry
from tillsync.peer.sync.frames import (
    PROTOCOL_VERSION,
    ProtocolError,
    decode,
    encode,
    entry_from_wire,
    entry_to_wire,
)

# -- events ---------------------------------------------------------------------------


class Event:
    """Base of everything a link reports."""


@dataclass(frozen=True)
class HelloReceived(Event):
    store: str
    device: str
    receipts_after: int
    doc_empty: bool


@dataclass(frozen=True)
class EnrollRequested(Event):
    code: str
    device: str
    name: str
    public_key: bytes


@dataclass(frozen=True)
class Authenticated(Event):
    store: str
    device: str
    receipts_after: int
    doc_empty: bool


@dataclass(frozen=True)
class Ready(Event):
    heads: dict[str, int]
    receipts_head: int
    cert: bytes  # this device's certificate, as the relay issues it now
    revoked: list[bytes]  # the store's revocations, signed by the relay


@dataclass(frozen=True)
class Enrolled(Event):
    store: str
    device: str
    relay_key: bytes
    cert: bytes


@dataclass(frozen=True)
class EntriesReceived(Event):
    entries: list[Entry]


@dataclass(frozen=True)
class Ingested(Event):
    """The relay stored a batch: its heads now, and its receipt stream's position after
    the batch (the receipts for it are at or before that position)."""

    heads: dict[str, int]
    count: int
    receipts_head: int


@dataclass(frozen=True)
class ReceiptsReceived(Event):
    receipts: list[dict[str, Any]]
    head: int


@dataclass(frozen=True)
class DocMessage(Event):
    """An Automerge sync message; ``edit``: an 'edit' frame (LAN only), the sender's own
    edit, pushed to every till it is linked with at once."""

    data: bytes
    edit: bool = False


@dataclass(frozen=True)
class DocSnapshot(Event):
    data: bytes


@dataclass(frozen=True)
class FileOffered(Event):
    sha256: bytes
    size: int
    media_type: str


@dataclass(frozen=True)
class FileWanted(Event):
    sha256: bytes
    offset: int


@dataclass(frozen=True)
class FileChunk(Event):
    sha256: bytes
    offset: int
    data: bytes


@dataclass(frozen=True)
class FileHeld(Event):
    sha256: bytes


@dataclass(frozen=True)
class FileRefused(Event):
    sha256: bytes
    code: str
    message: str


# The file frames each end takes: the sender's answers, the receiver's offers and chunks.
SENDER_GETS = ("file_want", "file_have", "file_refused")
RECEIVER_GETS = ("file_offer", "file_chunk")


def file_event(message: dict[str, Any]) -> Event:
    t, sha = message["t"], message["sha256"]
    if t == "file_offer":
        return FileOffered(sha, message["size"], message["type"])
    if t == "file_want":
        return FileWanted(sha, message["offset"])
    if t == "file_chunk":
        return FileChunk(sha, message["offset"], message["data"])
    if t == "file_have":
        return FileHeld(sha)
    return FileRefused(sha, message["code"], message["message"])


@dataclass(frozen=True)
class RemoteError(Event):
    """The other side sent an ``error`` frame."""

    code: str
    message: str
    fatal: bool


@dataclass(frozen=True)
class LinkFailed(Event):
    """The other side broke the protocol; an error frame has been queued for it."""

    code: str
    message: str


def transcript(store: str, device: str, nonce_d: bytes, nonce_r: bytes, relay_key: bytes) -> bytes:
    """What both ends sign: binds the store, the device, both nonces and the relay key."""
    packed = msgpack.packb([store, device, nonce_d, nonce_r, relay_key], use_bin_type=True)
    return hashlib.sha256(b"tillsync/auth/v1" + packed).digest()


class _Link:
    def __init__(self) -> None:
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self.state = "new"

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def _send(self, t: str, **fields: Any) -> None:
        self._out.append(encode(t, **fields))

    # frames either end may send once ready (which end sends which is in the protocol)

    def send_entries(self, entries: list[Entry]) -> None:
        self._send("entries", entries=[entry_to_wire(e) for e in entries])

    def send_ingested(self, heads: dict[str, int], count: int, receipts_head: int) -> None:
        self._send("ingested", heads=heads, count=count, receipts_head=receipts_head)

    def send_receipts(self, receipts: list[dict[str, Any]], head: int) -> None:
        self._send("receipts", receipts=receipts, head=head)

    def send_doc(self, data: bytes) -> None:
        self._send("doc", m=data)

    def send_file(self, t: str, sha256: bytes, **fields: Any) -> None:
        """A file frame (``file_offer``, ``file_want``, ``file_chunk``, ``file_have``,
        ``file_refused``) with its fields."""
        self._send(t, sha256=sha256, **fields)

    def fail(self, code: str, message: str, *, fatal: bool = True) -> None:
        """Tell the other side what is wrong (never internal details); close if fatal."""
        self._send("error", code=code, message=message, fatal=fatal)
        if fatal:
            self.state = "closed"

    def receive_data(self, data: bytes | str) -> None:
        if self.closed:
            return
        try:
            message = decode(data)
            if message["t"] == "error":
                self._events.append(RemoteError(message["code"], message["message"],
                                                message["fatal"]))
                if message["fatal"]:
                    self.state = "closed"
                return
            self._handle(message)
        except ProtocolError as exc:
            self._events.append(LinkFailed(exc.code, exc.message))
            self.fail(exc.code, exc.message, fatal=exc.fatal)

    def _handle(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    @staticmethod
    def _answer(message: dict[str, Any]) -> Event:
        """The event of an 'ingested', 'receipts' or 'doc' frame, checked (a device end
        and a till's LAN end take them alike)."""
        t = message["t"]
        if t == "ingested":
            return Ingested(_heads(message), message["count"], message["receipts_head"])
        if t == "receipts":
            if not all(isinstance(r, dict) for r in message["receipts"]):
                raise ProtocolError("bad_field", "receipts: each receipt is a map")
            return ReceiptsReceived(message["receipts"], message["head"])
        return DocMessage(message["m"])

    def _unexpected(self, message: dict[str, Any]) -> ProtocolError:
        return ProtocolError("unexpected", f"{message['t']!r} is not expected now "
                                           f"(link state {self.state})")


# -- the device end -------------------------------------------------------------------


class ClientLink(_Link):
    """A device's end of a link to the relay (or, later, to another till)."""

    def __init__(self, *, store: str, device: str, key: DeviceKey, nonce: bytes,
                 relay_key: bytes | None = None, receipts_after: int = 0,
                 doc_empty: bool = False) -> None:
        super().__init__()
        self.store, self.device = store, device
        self._key, self._nonce, self.relay_key = key, nonce, relay_key
        self._receipts_after, self._doc_empty = receipts_after, doc_empty

    def start(self) -> None:
        self._send("hello", v=PROTOCOL_VERSION, store=self.store, device=self.device,
                   nonce=self._nonce, receipts_after=self._receipts_after,
                   doc_empty=self._doc_empty)
        self.state = "hello_sent"

    def start_enroll(self, code: str, name: str) -> None:
        self._send("enroll", v=PROTOCOL_VERSION, code=code, device=self.device, name=name,
                   public_key=self._key.public_bytes)
        self.state = "enrolling"

    def _handle(self, message: dict[str, Any]) -> None:
        t = message["t"]
        if t == "enrolled" and self.state == "enrolling":
            self._events.append(Enrolled(message["store"], message["device"],
                                         message["relay_key"], message["cert"]))
            self.state = "closed"
        elif t == "challenge" and self.state == "hello_sent":
            relay_key = message["relay_key"]
            if self.relay_key is not None and relay_key != self.relay_key:
                raise ProtocolError("auth_failed", "the relay's key is not the one this "
                                                   "device enrolled with")
            proof = transcript(self.store, self.device, self._nonce, message["nonce"],
                               relay_key)
            if not verify_signature(relay_key, message["sig"], b"relay" + proof):
                raise ProtocolError("auth_failed", "the relay's signature does not verify")
            self._send("auth", sig=self._key.sign(b"device" + proof))
            self.state = "authenticating"
        elif t == "welcome" and self.state == "authenticating":
            heads = message["heads"]
            if not all(isinstance(k, str) and isinstance(v, int) for k, v in heads.items()):
                raise ProtocolError("bad_field", "welcome: heads maps device ids to seqs")
            self.state = "ready"
            self._events.append(Ready(heads, message["receipts_head"], message["cert"],
                                      list(message["revoked"])))
        elif self.state != "ready":
            raise self._unexpected(message)
        elif t in ("ingested", "receipts", "doc"):
            self._events.append(self._answer(message))
        elif t == "doc_snapshot":
            self._events.append(DocSnapshot(message["data"]))
        elif t in SENDER_GETS:
            self._events.append(file_event(message))
        else:
            raise self._unexpected(message)


# -- the relay end --------------------------------------------------------------------


class RelayLink(_Link):
    """The relay's end of one device's link."""

    def __init__(self, *, nonce: bytes) -> None:
        super().__init__()
        self._nonce = nonce
        self._key: DeviceKey | None = None  # the store's key, once the store is known
        self.store = self.device = ""
        self._device_key = b""
        self._hello: HelloReceived | None = None

    def _handle(self, message: dict[str, Any]) -> None:
        t = message["t"]
        if t in ("hello", "enroll") and self.state == "new":
            if message["v"] != PROTOCOL_VERSION:
                raise ProtocolError("version", f"protocol version {message['v']} is not "
                                               f"supported; this relay speaks {PROTOCOL_VERSION}")
            if t == "enroll":
                self.state = "enrolling"
                self._events.append(EnrollRequested(message["code"], message["device"],
                                                    message["name"], message["public_key"]))
                return
            self.store, self.device = message["store"], message["device"]
            self._hello = HelloReceived(self.store, self.device, message["receipts_after"],
                                        message["doc_empty"])
            self._client_nonce = message["nonce"]
            self.state = "looking_up"
            self._events.append(self._hello)
        elif t == "auth" and self.state == "challenged":
            assert self._key is not None
            proof = transcript(self.store, self.device, self._client_nonce, self._nonce,
                               self._key.public_bytes)
            if not verify_signature(self._device_key, message["sig"], b"device" + proof):
                raise ProtocolError("auth_failed", "the device's signature does not verify")
            assert self._hello is not None
            self.state = "authenticated"
            self._events.append(Authenticated(self.store, self.device,
                                              self._hello.receipts_after, self._hello.doc_empty))
        elif self.state != "ready":
            raise self._unexpected(message)
        elif t == "entries":
            self._events.append(EntriesReceived([entry_from_wire(e)
                                                 for e in message["entries"]]))
        elif t == "doc":
            self._events.append(DocMessage(message["m"]))
        elif t in RECEIVER_GETS:
            self._events.append(file_event(message))
        else:
            raise self._unexpected(message)

    # answers from the I/O layer

    def challenge(self, device_public_key: bytes, store_key: DeviceKey) -> None:
        """The device is registered with this key: prove the store's key (which signs
        for the store at the relay) and ask for the device's."""
        assert self.state == "looking_up"
        self._device_key, self._key = device_public_key, store_key
        proof = transcript(self.store, self.device, self._client_nonce, self._nonce,
                           self._key.public_bytes)
        self._send("challenge", nonce=self._nonce, relay_key=self._key.public_bytes,
                   sig=self._key.sign(b"relay" + proof))
        self.state = "challenged"

    def welcome(self, heads: dict[str, int], receipts_head: int, cert: bytes,
                revoked: list[bytes]) -> None:
        assert self.state == "authenticated"
        self._send("welcome", heads=heads, receipts_head=receipts_head, cert=cert,
                   revoked=revoked)
        self.state = "ready"

    def enrolled(self, store: str, device: str, cert: bytes, store_key: DeviceKey) -> None:
        """The device is enrolled: its certificate, and the store's key that signed it
        (the device pins it)."""
        self._send("enrolled", store=store, device=device, relay_key=store_key.public_bytes,
                   cert=cert)
        self.state = "closed"

    def send_snapshot(self, data: bytes) -> None:
        self._send("doc_snapshot", data=data)


# -- till to till, on the LAN ---------------------------------------------------------


@dataclass(frozen=True)
class PeerAuthenticated(Event):
    """The other till proved the key of its certificate; ``cert`` is that certificate."""

    cert: Certificate


@dataclass(frozen=True)
class HaveReceived(Event):
    """What the other till holds: per-device heads and its receipt stream position."""

    heads: dict[str, int]
    receipts_head: int


@dataclass(frozen=True)
class CertsReceived(Event):
    certs: list[bytes]


@dataclass(frozen=True)
class RevokedReceived(Event):
    """Revocations the other till holds (signed by the relay; not checked yet)."""

    revoked: list[bytes]


@dataclass(frozen=True)
class LinksReceived(Event):
    """The devices the other till says it has a ready LAN link with (a 'links' frame)."""

    devices: list[str]


def peer_transcript(store: str, dialer: str, listener: str, nonce_d: bytes,
                    nonce_l: bytes) -> bytes:
    """What two tills sign: the store, both device ids and both nonces."""
    packed = msgpack.packb([store, dialer, listener, nonce_d, nonce_l], use_bin_type=True)
    return hashlib.sha256(b"tillsync/peer/v2" + packed).digest()


def _heads(message: dict[str, Any]) -> dict[str, int]:
    heads = message["heads"]
    if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
               for k, v in heads.items()):
        raise ProtocolError("bad_field", f"{message['t']}: heads maps device ids to seqs")
    return dict(heads)


class PeerLink(_Link):
    """One end of a link between two tills of a store, on the LAN.

    The dialer sends ``peer_hello`` with its certificate; the listener checks it and
    answers ``peer_challenge`` with its own and a signature over the transcript; the
    dialer checks both and answers ``auth``.  Certificates are checked against the
    relay's key (``issuer``), which both tills pinned when they enrolled: no internet is
    needed.  After that the link is symmetric: each end states what it holds (``have``),
    then pushes what the other lacks (``certs``, ``entries`` answered by ``ingested``,
    ``receipts``, ``doc``)."""

    def __init__(self, *, store: str, cert: bytes, key: DeviceKey, issuer: bytes,
                 nonce: bytes, dialer: bool,
                 revoked: Callable[[str], bool] = lambda device: False,
                 now: float | None = None) -> None:
        super().__init__()
        self._now = now  # when the link opened (Unix seconds): the peer's certificate
        # must be valid then; None skips the check (no clock inside the sans-I/O core)
        self.store, self._cert, self._key = store, cert, key
        self._issuer, self._nonce, self.dialer = issuer, nonce, dialer
        self._revoked = revoked  # whether this till knows the device id to be revoked
        self.device = Certificate.load(cert, issuer, store=store).device
        self.peer: Certificate | None = None
        self._peer_nonce = b""

    def start(self) -> None:
        assert self.dialer and self.state == "new"
        self._send("peer_hello", v=PROTOCOL_VERSION, store=self.store, cert=self._cert,
                   nonce=self._nonce)
        self.state = "hello_sent"

    def _check_cert(self, raw: bytes) -> Certificate:
        try:
            cert = Certificate.load(raw, self._issuer, store=self.store, now=self._now)
        except CertificateError as exc:
            raise ProtocolError("bad_certificate", str(exc)) from None
        if cert.device == self.device:
            raise ProtocolError("self", "this is a link to the same till")
        if self._revoked(cert.device):
            raise ProtocolError("revoked", f"device {cert.device} ({cert.name}) has been "
                                "revoked by the relay")
        return cert

    def _transcript(self) -> bytes:
        assert self.peer is not None
        if self.dialer:
            return peer_transcript(self.store, self.device, self.peer.device, self._nonce,
                                   self._peer_nonce)
        return peer_transcript(self.store, self.peer.device, self.device, self._peer_nonce,
                               self._nonce)

    def _handle(self, message: dict[str, Any]) -> None:
        t = message["t"]
        if t == "peer_hello" and self.state == "new" and not self.dialer:
            if message["v"] != PROTOCOL_VERSION:
                raise ProtocolError("version", f"protocol version {message['v']} is not "
                                               f"supported; this till speaks {PROTOCOL_VERSION}")
            if message["store"] != self.store:
                raise ProtocolError("wrong_store", "this till belongs to another store")
            self.peer = self._check_cert(message["cert"])
            self._peer_nonce = message["nonce"]
            self._send("peer_challenge", cert=self._cert, nonce=self._nonce,
                       sig=self._key.sign(b"listener" + self._transcript()))
            self.state = "challenged"
        elif t == "peer_challenge" and self.state == "hello_sent":
            self.peer = self._check_cert(message["cert"])
            self._peer_nonce = message["nonce"]
            if not verify_signature(self.peer.public_key, message["sig"],
                                    b"listener" + self._transcript()):
                raise ProtocolError("auth_failed", "the other till's signature does not verify")
            self._send("auth", sig=self._key.sign(b"dialer" + self._transcript()))
            self.state = "ready"
            self._events.append(PeerAuthenticated(self.peer))
        elif t == "auth" and self.state == "challenged":
            assert self.peer is not None
            if not verify_signature(self.peer.public_key, message["sig"],
                                    b"dialer" + self._transcript()):
                raise ProtocolError("auth_failed", "the other till's signature does not verify")
            self.state = "ready"
            self._events.append(PeerAuthenticated(self.peer))
        elif self.state != "ready":
            raise self._unexpected(message)
        elif t == "have":
            self._events.append(HaveReceived(_heads(message), message["receipts_head"]))
        elif t == "certs":
            self._events.append(CertsReceived(list(message["certs"])))
        elif t == "revoked":
            self._events.append(RevokedReceived(list(message["revoked"])))
        elif t == "entries":
            self._events.append(EntriesReceived([entry_from_wire(e)
                                                 for e in message["entries"]]))
        elif t in ("ingested", "receipts", "doc"):
            self._events.append(self._answer(message))
        elif t == "edit":
            self._events.append(DocMessage(message["m"], edit=True))
        elif t == "links":
            self._events.append(LinksReceived(list(message["devices"])))
        elif t in SENDER_GETS or t in RECEIVER_GETS:
            self._events.append(file_event(message))
        else:
            raise self._unexpected(message)

    def send_edit(self, data: bytes) -> None:
        """A document sync message sent because of this till's own edit ('edit')."""
        self._send("edit", m=data)

    def send_links(self, devices: list[str]) -> None:
        self._send("links", devices=devices)

    def send_have(self, heads: dict[str, int], receipts_head: int) -> None:
        self._send("have", heads=heads, receipts_head=receipts_head)

    def send_certs(self, certs: list[bytes]) -> None:
        self._send("certs", certs=certs)

    def send_revoked(self, revoked: list[bytes]) -> None:
        self._send("revoked", revoked=revoked)
