"""automerge-repo's websocket protocol, sans I/O: CBOR frames in, frames and events out.

automerge-repo (``@automerge/automerge-repo`` with its websocket network adapter,
protocol version "1", tested against the versions pinned in ``tests/js/package.json``)
sends one CBOR map per websocket message.  The client opens with ``join``; the server
answers ``peer``.  Then ``request`` (a document the client does not hold yet) and
``sync`` frames carry ``{documentId, data}``, ``data`` being an Automerge sync message;
the server answers both with ``sync`` frames, and ``doc-unavailable`` for a document it
does not serve.  ``ephemeral``, ``remote-subscription-change`` and
``remote-heads-changed`` are read and ignored.  ``error`` ends a connection: the side
that sends it closes it.

A store has exactly one document here, the master data, whose id (``document_id``) is
derived from the store id, so every till and the relay serve it under the same
``automerge:<id>`` URL.  What a sync message may change is not this module's business:
``peer.amrepo.checks`` decides that, an adapter (``peer.amrepo.till``,
``relay.amrepo``) drives both.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import cbor2

PROTOCOL_VERSION = "1"
MAX_FRAME = 32 * 1024 * 1024  # a first sync carries the whole document in one frame
PATH = "/automerge"  # where tills and the relay accept automerge-repo clients

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_IGNORED = frozenset({"ephemeral", "remote-subscription-change", "remote-heads-changed",
                      "doc-unavailable"})


class FrameError(ValueError):
    """A frame that breaks the protocol; the connection ends with an ``error`` frame."""


# -- document ids ------------------------------------------------------------------------

def _checksum(payload: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]


def bs58check_encode(payload: bytes) -> str:
    """Base58 (Bitcoin's alphabet) of ``payload`` and its 4-byte double-SHA-256 checksum,
    as automerge-repo writes document ids (its ``bs58check`` package)."""
    data = payload + _checksum(payload)
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, digit = divmod(number, 58)
        out.append(_ALPHABET[digit])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))


def bs58check_decode(text: str) -> bytes:
    """The payload of a bs58check string; ``ValueError`` if it is not one."""
    number = 0
    for char in text:
        digit = _ALPHABET.find(char)
        if digit < 0:
            raise ValueError(f"{char!r} is not a base58 digit")
        number = number * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    data = b"\0" * zeros + body
    if len(data) < 4 or _checksum(data[:-4]) != data[-4:]:
        raise ValueError("bad bs58check checksum")
    return data[:-4]


def document_id(store: str) -> str:
    """The store's automerge-repo document id: 16 bytes derived from the store id (the
    size of the random UUIDs automerge-repo makes), in bs58check."""
    return bs58check_encode(hashlib.sha256(b"tillsync/automerge-repo/" + store.encode())
                            .digest()[:16])


def document_url(store: str) -> str:
    return "automerge:" + document_id(store)


# -- one connection ----------------------------------------------------------------------

@dataclass(frozen=True)
class Joined:
    """The client said who it is (``join``); the ``peer`` answer is queued."""

    peer_id: str


@dataclass(frozen=True)
class SyncReceived:
    """An Automerge sync message for the store's document (``request`` or ``sync``)."""

    data: bytes


Event = Joined | SyncReceived


class RepoSession:
    """The server's side of one automerge-repo websocket connection."""

    def __init__(self, server_peer: str, store: str) -> None:
        self.server_peer = server_peer
        self.document_id = document_id(store)
        self.client_peer: str | None = None
        self.closed = False
        self._out: list[bytes] = []

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def _send(self, frame: dict[str, Any]) -> None:
        if not self.closed:
            self._out.append(cbor2.dumps(frame))

    def receive(self, frame: bytes) -> list[Event]:
        """Events of one websocket message.  A frame that breaks the protocol queues an
        ``error`` frame and closes the session (``closed``); the adapter then sends what
        is queued and closes the socket."""
        if self.closed:
            return []
        try:
            return self._receive(frame)
        except FrameError as exc:
            self.refuse(str(exc))
            return []

    def _receive(self, frame: bytes) -> list[Event]:
        if len(frame) > MAX_FRAME:
            raise FrameError(f"frame of {len(frame)} bytes; at most {MAX_FRAME}")
        try:
            message = cbor2.loads(frame)
        except Exception as exc:  # cbor2 raises several kinds for bad bytes
            raise FrameError(f"not a CBOR frame: {exc}") from None
        if not isinstance(message, dict):
            raise FrameError("a frame is a CBOR map")
        kind, sender = message.get("type"), message.get("senderId")
        if not isinstance(kind, str) or not isinstance(sender, str) or not sender:
            raise FrameError("a frame has a string 'type' and 'senderId'")
        if kind == "join":
            versions = message.get("supportedProtocolVersions", [PROTOCOL_VERSION])
            if not isinstance(versions, list) or PROTOCOL_VERSION not in versions:
                self.client_peer = sender
                raise FrameError("unsupported protocol version")
            self.client_peer = sender
            self._send({"type": "peer", "senderId": self.server_peer, "peerMetadata": {},
                        "selectedProtocolVersion": PROTOCOL_VERSION, "targetId": sender})
            return [Joined(sender)]
        if self.client_peer is None:
            raise FrameError(f"'{kind}' before 'join'")
        if kind in ("request", "sync"):
            doc, data = message.get("documentId"), message.get("data")
            if not isinstance(doc, str) or not isinstance(data, bytes) or not data:
                raise FrameError(f"a '{kind}' frame has a string 'documentId' and bytes "
                                    "'data'")
            if doc != self.document_id:
                self._send({"type": "doc-unavailable", "senderId": self.server_peer,
                            "targetId": self.client_peer, "documentId": doc})
                return []
            return [SyncReceived(data)]
        if kind == "error":
            self.closed = True  # the client ends the connection
            return []
        if kind not in _IGNORED:
            raise FrameError(f"unknown frame type {kind!r}")
        return []

    def send_sync(self, data: bytes) -> None:
        """Queue an Automerge sync message for the client."""
        assert self.client_peer is not None, "sync before join"
        self._send({"type": "sync", "senderId": self.server_peer,
                    "targetId": self.client_peer, "documentId": self.document_id,
                    "data": data})

    def refuse(self, message: str) -> None:
        """Queue an ``error`` frame and end the session: the adapter closes the socket."""
        self._send({"type": "error", "senderId": self.server_peer,
                    "targetId": self.client_peer or "", "message": message})
        self.closed = True
