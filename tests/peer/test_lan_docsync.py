"""peer.lan.docsync: which document messages a LAN link sends, sans I/O.

Who is linked with whom (``Mesh``) decides whether a change an author pushed to this
till is announced on to a peer; an answer that says only "we hold the same heads" goes
as a heads message and is read back as the full message it stands for."""

from __future__ import annotations

import automerge.core as am
import pytest

from tests.peer.test_peer_link import link_in, refused
from tillsync.peer.lan.docsync import (
    ANNOUNCE_DELAY,
    DocSync,
    Mesh,
    in_sync_heads,
    in_sync_message,
)
from tillsync.peer.master.document import MasterData, heads_only, message_heads
from tillsync.peer.sync.engine import DocMessage, LinksReceived
from tillsync.peer.sync.frames import encode

BREAD = ("products", "bread", {"name": "Bread", "sku": "B1", "price": 320})
A, B, X = "dev-a", "dev-b", "dev-x"  # an author, this till, a third till


def exchange(first: tuple[DocSync, MasterData, am.SyncState],
             second: tuple[DocSync, MasterData, am.SyncState], now: float = 0.0) -> int:
    """Run two link ends until neither has a message to send; the bytes sent."""
    sent = 0
    for _ in range(20):
        quiet = True
        for (out, doc, state), (into, other, other_state) in ((first, second),
                                                                (second, first)):
            message, _ = out.outgoing(doc, state, now)
            if message is None:
                continue
            quiet, sent = False, sent + len(message)
            data = into.received(message, other, edit=out.edit)
            other.receive_sync(other_state, data)
            into.applied()
        if quiet:
            return sent
    raise AssertionError("the two ends never went quiet")


def linked_end(doc: MasterData, mesh: Mesh, peer: str, *, first: bool = True
               ) -> tuple[DocSync, MasterData, am.SyncState]:
    mesh.up(peer)
    return DocSync(doc, first=first, mesh=mesh, peer=peer), doc, am.SyncState()


def test_a_change_pushed_by_its_author_is_not_announced_to_a_peer_linked_with_it() -> None:
    author, mine = MasterData.new(b"\x01" * 16), MasterData.new(b"\x02" * 16)
    mesh = Mesh()
    from_author = linked_end(mine, mesh, A)
    at_author = linked_end(author, Mesh(), B, first=False)
    to_x = DocSync(mine, first=True, mesh=mesh, peer=X)
    mesh.up(X)
    x_state = am.SyncState()
    exchange(from_author, at_author)
    while to_x.outgoing(mine, x_state, 0.0)[0] is not None:
        pass  # X's first full message, as the link starts (X is not simulated further)
    mesh.stated(A, [B, X])
    mesh.stated(X, [A, B])

    author.put(*BREAD)  # the author's own edit: an 'edit' frame, here from A
    message, _ = at_author[0].outgoing(author, at_author[2], 1.0)
    assert message is not None and at_author[0].edit
    data = from_author[0].received(message, mine, edit=True)
    mine.receive_sync(from_author[2], data)
    from_author[0].applied()
    assert set(mine.heads()) == set(author.heads())
    # X holds it from A: nothing to announce to X, now or later.
    assert to_x.outgoing(mine, x_state, 1.0) == (None, None)
    assert to_x.outgoing(mine, x_state, 9.0) == (None, None)

    # X says its link with A is gone (the edit may have died with it): announced, once due.
    mesh.stated(X, [B])
    message, wake_at = to_x.outgoing(mine, x_state, 10.0)
    assert message is None and wake_at == 10.0 + ANNOUNCE_DELAY
    message, _ = to_x.outgoing(mine, x_state, wake_at)
    assert message is not None and heads_only(message)
    assert message_heads(message) == set(author.heads())


@pytest.mark.parametrize("a_says, x_says", [([B], [A, B]), ([B, X], [B]), (None, [A, B])])
def test_only_a_link_both_ends_state_counts(a_says: list[str] | None, x_says: list[str]
                                            ) -> None:
    author, mine = MasterData.new(b"\x01" * 16), MasterData.new(b"\x02" * 16)
    mesh = Mesh()
    mesh.up(A)
    mesh.up(X)
    to_x = DocSync(mine, first=True, mesh=mesh, peer=X)
    x_state = am.SyncState()
    while to_x.outgoing(mine, x_state, 0.0)[0] is not None:
        pass
    if a_says is not None:
        mesh.stated(A, a_says)
    mesh.stated(X, x_says)
    author.put(*BREAD)
    mine.apply(author.save())
    mesh.pushed(A, set(author.heads()))
    assert mesh.held_by(X) == set()
    _, wake_at = to_x.outgoing(mine, x_state, 1.0)
    message, _ = to_x.outgoing(mine, x_state, wake_at or 1.0)
    assert message is not None and heads_only(message)


def test_what_a_peer_said_goes_with_its_last_link_and_waking_follows_changes() -> None:
    mesh = Mesh()
    woken: list[int] = []
    mesh.listen(lambda: woken.append(1))
    mesh.up(A)
    mesh.up(A)  # a second link to the same till (both dialled at once)
    mesh.stated(A, [X])
    mesh.stated(A, [X])  # the same again: no news
    mesh.up(X)
    mesh.stated(X, [A])
    mesh.pushed(A, {b"h" * 32})
    assert mesh.mine == {A, X} and mesh.held_by(X) == {b"h" * 32} and len(woken) == 4
    mesh.down(A)
    assert mesh.held_by(X) == {b"h" * 32}  # one link to A is left
    mesh.down(A)
    assert mesh.mine == {X} and mesh.held_by(X) == set() and len(woken) == 5
    mesh.stated(A, [X])  # a frame from a link already gone is not kept
    assert mesh.held_by(X) == set()


def test_each_link_states_its_till_s_links_when_they_change() -> None:
    mesh = Mesh()
    doc = MasterData.new(b"\x02" * 16)
    link = DocSync(doc, first=True, mesh=mesh, peer=A)
    mesh.up(A)
    assert link.links_due() == [A]
    assert link.links_due() is None
    mesh.up(X)
    assert link.links_due() == [A, X]
    mesh.down(X)
    assert link.links_due() == [A]


def test_an_in_sync_answer_goes_as_a_heads_message_and_reads_back_exactly() -> None:
    author, mine = MasterData.new(b"\x01" * 16), MasterData.new(b"\x02" * 16)
    at_author = linked_end(author, Mesh(), B)
    at_mine = linked_end(mine, Mesh(), A, first=False)
    exchange(at_author, at_mine)
    author.put(*BREAD)
    message, _ = at_author[0].outgoing(author, at_author[2], 1.0)
    assert message is not None
    mine.receive_sync(at_mine[2], at_mine[0].received(message, mine, edit=True))
    at_mine[0].applied()
    generated: list[bytes | None] = []  # what Automerge answers: "I hold what you hold"
    automerge_answer = mine.sync_message
    mine.sync_message = lambda state: generated.append(  # type: ignore[method-assign]
        automerge_answer(state)) or generated[-1]
    answer, _ = at_mine[0].outgoing(mine, at_mine[2], 1.0)
    [full] = generated
    assert full is not None and in_sync_heads(full) == list(mine.heads())
    assert answer is not None and heads_only(answer) and len(answer) == len(full) - 34
    # The author reads it back as the full message, applies it and owes no answer.
    data = at_author[0].received(answer, author)
    assert data == full == in_sync_message(list(author.heads()))
    author.receive_sync(at_author[2], data)
    at_author[0].applied()
    assert at_author[0].outgoing(author, at_author[2], 1.0) == (None, None)


def test_spread_out_edits_keep_their_messages_the_same_size() -> None:
    """The heads-message answers advance the author's shared heads as Automerge's own
    would: its Bloom filter does not grow edit after edit."""
    author, mine = MasterData.new(b"\x01" * 16), MasterData.new(b"\x02" * 16)
    author.put(*BREAD)
    at_author = linked_end(author, Mesh(), B)
    at_mine = linked_end(mine, Mesh(), A, first=False)
    exchange(at_author, at_mine)
    sizes = []
    for price in range(400, 420):
        author.put("products", "bread", {"price": price})
        sizes.append(exchange(at_author, at_mine))
    assert set(mine.heads()) == set(author.heads())
    assert max(sizes) - min(sizes) <= 2, sizes  # a varint may grow by a byte


def test_a_message_that_is_not_in_sync_is_not_read_as_one() -> None:
    doc = MasterData.new(b"\x01" * 16)
    doc.put(*BREAD)
    full = doc.sync_message(am.SyncState())
    assert full is not None and in_sync_heads(full) is None
    assert in_sync_heads(doc.heads_message()) is None
    synced = in_sync_message(list(doc.heads()))
    assert in_sync_heads(synced) == list(doc.heads())
    for cut in range(1, len(synced)):
        assert in_sync_heads(synced[:cut]) is None
    assert in_sync_heads(synced + b"\x00") is None


def test_links_and_edit_frames_are_read_and_a_bad_one_is_refused() -> None:
    link = link_in("listener", "ready")
    link.receive_data(encode("links", devices=[A, X]))
    link.receive_data(encode("edit", m=b"\x42\x00"))
    assert link.events_received() == [LinksReceived([A, X]), DocMessage(b"\x42\x00", edit=True)]
    refused(link_in("listener", "ready"), encode("links", devices=[A, 7]), "bad_field")
    refused(link_in("listener", "ready"), encode("links", devices=[""]), "bad_field")
    refused(link_in("listener", "ready"), encode("links", devices=[A] * 1001), "bad_field")
    refused(link_in("listener", "ready"), encode("edit", m="not bytes"), "bad_field")
    refused(link_in("dialer", "hello_sent"), encode("links", devices=[A]), "unexpected")
