"""automerge-repo's websocket protocol, sans I/O (``peer.amrepo.protocol``)."""

from __future__ import annotations

import cbor2
import pytest

from tillsync.peer.amrepo.protocol import (
    Joined,
    RepoSession,
    SyncReceived,
    bs58check_decode,
    bs58check_encode,
    document_id,
)


def test_bs58check_matches_the_javascript_package() -> None:
    # Written by automerge-repo's own bs58check (tests/js) for these bytes.
    assert bs58check_encode(bytes(range(16))) == "1Bhh3pU9gLXZiNDL6PEa1Gs9fh"
    assert bs58check_encode(bytes(16)) == "11111111111111114Ki9Gx"
    assert bs58check_decode("1Bhh3pU9gLXZiNDL6PEa1Gs9fh") == bytes(range(16))
    with pytest.raises(ValueError):
        bs58check_decode("1Bhh3pU9gLXZiNDL6PEa1Gs9fi")  # checksum
    assert len(bs58check_decode(document_id("shop"))) == 16
    assert document_id("shop") == document_id("shop") != document_id("shop2")


def frame(**fields: object) -> bytes:
    return cbor2.dumps(fields)


def test_join_then_sync_for_the_store_document_and_unavailable_for_another() -> None:
    session = RepoSession("server", "shop")
    assert session.receive(frame(type="join", senderId="c1", peerMetadata={},
                                 supportedProtocolVersions=["1"])) == [Joined("c1")]
    (peer,) = [cbor2.loads(f) for f in session.data_to_send()]
    assert peer["type"] == "peer" and peer["targetId"] == "c1"
    assert peer["selectedProtocolVersion"] == "1"
    doc = session.document_id
    assert session.receive(frame(type="request", senderId="c1", targetId="server",
                                 documentId=doc, data=b"\x42\x00")) == [SyncReceived(b"\x42\x00")]
    assert session.receive(frame(type="sync", senderId="c1", targetId="server",
                                 documentId="other", data=b"\x42")) == []
    (unavailable,) = [cbor2.loads(f) for f in session.data_to_send()]
    assert unavailable == {"type": "doc-unavailable", "senderId": "server", "targetId": "c1",
                           "documentId": "other"}
    session.send_sync(b"\x42\x01")
    (sync,) = [cbor2.loads(f) for f in session.data_to_send()]
    assert sync["data"] == b"\x42\x01" and sync["documentId"] == doc
    assert session.receive(frame(type="ephemeral", senderId="c1", targetId="server",
                                 documentId=doc, data=b"x", count=1, sessionId="s")) == []
    assert not session.closed


@pytest.mark.parametrize("bad", [
    b"\xff\x00", cbor2.dumps([1, 2]), frame(type="sync", senderId="c1", documentId="x",
                                             data=b"\x42"),
    frame(type="join", senderId="c1", supportedProtocolVersions=["2"]),
])
def test_a_frame_that_breaks_the_protocol_ends_the_session_with_an_error(bad: bytes) -> None:
    session = RepoSession("server", "shop")
    assert session.receive(bad) == []
    assert session.closed
    (error,) = [cbor2.loads(f) for f in session.data_to_send()]
    assert error["type"] == "error" and error["message"]
