"""File transfer, sans I/O (``peer.sync.files``): offers, wants, chunks, answers, resume
points, hash failures, limits and the window a sender may run ahead; then the I/O layer
(``peer.filelink``) on real engine links and a real content directory, no sockets: two
links bringing the same file into one till leave no partial behind and the slower
transfer stops."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.peer.test_sync_engine import frame_of, ready_pair
from tillsync.peer.filelink import TOO_LARGE, WRONG_TYPE, FileLink, FilePolicy
from tillsync.peer.files import ContentDir
from tillsync.peer.sync.engine import ClientLink, Event, RelayLink
from tillsync.peer.sync.files import MAX_TRIES, WINDOW, Incoming, Outgoing
from tillsync.peer.sync.frames import MAX_CHUNK

SHA, OTHER = hashlib.sha256(b"one").digest(), hashlib.sha256(b"two").digest()


# -- the core: a sender and a receiver moved by hand ------------------------------------


def test_a_file_is_offered_once_per_link_and_is_busy_until_answered() -> None:
    out = Outgoing()
    assert out.offer(SHA, 10) and not out.offer(SHA, 10)
    assert out.busy and out.known == {SHA}
    assert out.due() == []  # nothing goes before the receiver's first want
    assert out.finished(SHA) and not out.busy and out.known == {SHA}
    assert not out.offer(SHA, 10)  # answered on this link: never offered again
    assert not out.finished(SHA)  # a second answer is a late one


def test_a_first_want_sets_where_sending_starts_and_the_window_bounds_it() -> None:
    out = Outgoing()
    size = 10 * MAX_CHUNK + 7
    out.offer(SHA, size)
    out.wanted(SHA, 3 * MAX_CHUNK)  # the receiver holds three chunks already
    due = out.due()
    assert [offset for _, offset, _ in due] == [3 * MAX_CHUNK + i * MAX_CHUNK
                                                for i in range(WINDOW // MAX_CHUNK)]
    assert out.due() == []  # a window ahead of the last want: it waits
    out.wanted(SHA, 4 * MAX_CHUNK)  # one chunk acknowledged: one more may go
    assert [(offset, length) for _, offset, length in out.due()] == [
        (3 * MAX_CHUNK + WINDOW, MAX_CHUNK)]
    # The receiver holds more than this link sent (another link brought bytes of the
    # same file): the sender goes on from there, skipping what it holds.
    out.wanted(SHA, 9 * MAX_CHUNK)
    assert [(offset, length) for _, offset, length in out.due()] == [
        (9 * MAX_CHUNK, MAX_CHUNK), (10 * MAX_CHUNK, 7)]
    assert out.due() == []  # everything sent: only the answer is awaited


def test_a_want_that_does_not_move_forward_sends_again_from_there() -> None:
    out = Outgoing()
    out.offer(SHA, 4 * MAX_CHUNK)
    out.wanted(SHA, 0)
    assert len(out.due()) == 4
    out.wanted(SHA, 2 * MAX_CHUNK)
    out.wanted(SHA, 0)  # the file failed its hash: everything again
    assert [offset for _, offset, _ in out.due()] == [0, MAX_CHUNK, 2 * MAX_CHUNK,
                                                      3 * MAX_CHUNK]
    out.wanted(SHA, 5 * MAX_CHUNK)  # beyond the file: ignored
    assert out.due() == []


def test_files_go_one_after_the_other_within_one_window_over_all() -> None:
    out = Outgoing()
    out.offer(SHA, 3 * MAX_CHUNK)
    out.offer(OTHER, 3 * MAX_CHUNK)
    out.wanted(OTHER, 0)
    out.wanted(SHA, 0)
    # The first offered first, all its chunks before the other's first.
    assert [(sha, offset) for sha, offset, _ in out.due()] == [
        (SHA, 0), (SHA, MAX_CHUNK), (SHA, 2 * MAX_CHUNK)]
    assert out.ahead == 3 * MAX_CHUNK
    # Then the other, but only as far as the window over both files allows.
    assert [(sha, offset) for sha, offset, _ in out.due()] == [(OTHER, 0)]
    assert out.due() == [] and out.ahead == WINDOW
    out.finished(SHA)  # answered: its bytes are no longer on their way
    assert [(sha, offset) for sha, offset, _ in out.due()] == [
        (OTHER, MAX_CHUNK), (OTHER, 2 * MAX_CHUNK)]
    assert out.ahead == 3 * MAX_CHUNK


def test_a_receiver_asks_from_what_it_holds() -> None:
    incoming = Incoming()
    assert incoming.want(SHA, 100, "application/pdf", held=40) == 40
    assert incoming.position(SHA) == 40 and incoming.expects(SHA) == (100, "application/pdf")
    # More held than the file says: what is held is not this file's start.
    assert incoming.want(OTHER, 100, "image/png", held=150) == 0
    assert incoming.receiving == {SHA, OTHER}


def test_each_chunk_is_written_only_at_the_position_the_receiver_holds() -> None:
    incoming = Incoming()
    incoming.want(SHA, 100, "application/pdf", held=0)
    assert incoming.chunk(SHA, 0, 60) == "write"
    assert not incoming.written(SHA, 60)
    # The sender was told 60 with the answer to the write: chunks elsewhere were sent
    # before that answer reached it, and are dropped unanswered.
    assert incoming.chunk(SHA, 0, 60) == "stale"  # a duplicate
    assert incoming.chunk(SHA, 70, 10) == "stale"  # a gap
    assert incoming.chunk(SHA, 60, 41) == "resync"  # past the size offered: answered
    assert incoming.chunk(SHA, 70, 10) == "stale"
    assert incoming.position(SHA) == 60
    assert incoming.chunk(OTHER, 0, 10) == "unasked"
    assert incoming.chunk(SHA, 60, 40) == "write"
    assert incoming.written(SHA, 100)
    assert incoming.verified(SHA, True) == "have"
    assert incoming.receiving == set()
    assert incoming.chunk(SHA, 60, 40) == "late"  # sent before the answer reached it


def test_a_file_that_fails_its_hash_is_asked_again_then_refused() -> None:
    incoming = Incoming()
    incoming.want(SHA, 10, "application/pdf", held=0)
    for _ in range(MAX_TRIES - 1):
        incoming.written(SHA, 10)
        assert incoming.verified(SHA, False) == "again"
        assert incoming.position(SHA) == 0 and incoming.chunk(SHA, 0, 10) == "write"
    incoming.written(SHA, 10)
    assert incoming.verified(SHA, False) == "refused"
    assert incoming.chunk(SHA, 0, 10) == "late"


def test_a_file_that_came_by_another_link_ends_the_transfer() -> None:
    incoming = Incoming()
    incoming.want(SHA, 10 * MAX_CHUNK, "application/pdf", held=0)
    incoming.written(SHA, MAX_CHUNK)
    incoming.held(SHA)
    assert incoming.receiving == set()
    assert incoming.chunk(SHA, MAX_CHUNK, MAX_CHUNK) == "late"
    # Offered again on this link later (a new round): asked for as usual.
    assert incoming.want(SHA, 10 * MAX_CHUNK, "application/pdf", held=0) == 0
    assert incoming.chunk(SHA, 0, MAX_CHUNK) == "write"


def test_the_policy_refuses_too_large_and_other_types() -> None:
    policy = FilePolicy(max_size=1000, media_types=("image/png",))
    assert policy.refusal(1000, "image/png") is None
    assert policy.refusal(1001, "image/png")[0] == TOO_LARGE  # type: ignore[index]
    code, message = policy.refusal(10, "x" * 500) or ("", "")
    assert code == WRONG_TYPE and len(message) < 200 and "image/png" in message


@dataclass
class Medium:
    """The bytes of a transfer between an ``Outgoing`` and an ``Incoming``: what the
    receiver's partial file holds, and what crossed the wire."""

    source: bytes
    partial: bytearray = field(default_factory=bytearray)
    sent: list[tuple[int, int]] = field(default_factory=list)
    most_ahead: int = 0

    def run(self, out: Outgoing, incoming: Incoming, *, cut_after: int | None = None,
            corrupt: int | None = None) -> str | None:
        """Move chunks until the receiver answers for good (its answer), or until
        ``cut_after`` chunks crossed (None: the link was cut)."""
        size, sha = len(self.source), hashlib.sha256(self.source).digest()
        out.offer(sha, size)
        out.wanted(sha, incoming.want(sha, size, "application/pdf", len(self.partial)))
        crossed = 0
        while True:
            due = out.due()
            if not due:
                return None
            for sha, offset, length in due:
                self.most_ahead = max(self.most_ahead, out.ahead)
                if cut_after is not None and crossed == cut_after:
                    return None
                crossed += 1
                self.sent.append((offset, length))
                data = self.source[offset:offset + length]
                if corrupt is not None and offset <= corrupt < offset + length:
                    at = corrupt - offset  # that byte flipped: always a change
                    data = data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]
                    corrupt = None
                verdict = incoming.chunk(sha, offset, length)
                if verdict == "resync":
                    out.wanted(sha, incoming.position(sha))
                    continue
                assert verdict == "write" and offset == len(self.partial)
                self.partial += data
                if not incoming.written(sha, len(self.partial)):
                    out.wanted(sha, len(self.partial))
                    continue
                ok = hashlib.sha256(self.partial).digest() == sha
                answer = incoming.verified(sha, ok)
                if answer == "again":
                    self.partial.clear()
                    out.wanted(sha, 0)
                    continue
                out.finished(sha)
                return answer


def test_a_cut_transfer_resumes_from_what_the_receiver_holds() -> None:
    data = os.urandom(7 * MAX_CHUNK + 123)
    medium = Medium(data)
    assert medium.run(Outgoing(), Incoming(), cut_after=3) is None
    assert bytes(medium.partial) == data[:3 * MAX_CHUNK]
    medium.sent.clear()
    # A new link: new sender and receiver, the partial file kept.
    assert medium.run(Outgoing(), Incoming()) == "have"
    assert bytes(medium.partial) == data
    assert medium.sent[0] == (3 * MAX_CHUNK, MAX_CHUNK)  # nothing held is sent again
    assert sum(length for _, length in medium.sent) == len(data) - 3 * MAX_CHUNK


def test_a_chunk_corrupted_on_the_way_makes_the_whole_file_go_again() -> None:
    data = os.urandom(3 * MAX_CHUNK)
    medium = Medium(data)
    assert medium.run(Outgoing(), Incoming(), corrupt=MAX_CHUNK + 5) == "have"
    assert bytes(medium.partial) == data
    assert [offset for offset, _ in medium.sent] == [0, MAX_CHUNK, 2 * MAX_CHUNK] * 2


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 9 * MAX_CHUNK), cut=st.integers(0, 12))
def test_any_transfer_stays_within_the_window_and_ends_whole(size: int, cut: int) -> None:
    data = os.urandom(size)
    medium = Medium(data)
    first = medium.run(Outgoing(), Incoming(), cut_after=cut)
    answer = first or medium.run(Outgoing(), Incoming())
    assert answer == "have" and bytes(medium.partial) == data
    assert 0 < medium.most_ahead <= WINDOW
    assert medium.most_ahead == min(WINDOW, -(-size // MAX_CHUNK) * MAX_CHUNK) or \
        size % MAX_CHUNK  # a full window goes whenever the file is that long
    # Every byte crossed once, however the link was cut.
    assert sum(length for _, length in medium.sent) == size


# -- the I/O layer on real links and a real directory -----------------------------------


class Wire:
    """One link, a sending till's ``FileLink`` on its client side and a receiving one's
    on the relay side, its frames moved by the test."""

    def __init__(self, source: ContentDir, target: ContentDir) -> None:
        pair = ready_pair()
        self.client: ClientLink = pair.client
        self.relay: RelayLink = pair.relay
        self.held: list[str] = []
        self.refused: list[tuple[str, str]] = []

        async def held(sha256: str) -> None:
            self.held.append(sha256)

        async def refused(sha256: str, code: str, message: str) -> None:
            self.refused.append((sha256, code))

        self.sender = FileLink(self.client, source, held=held, refused=refused)
        self.receiver = FileLink(self.relay, target)
        self.frames: list[dict[str, object]] = []

    async def _move(self, src: ClientLink | RelayLink, dst: ClientLink | RelayLink,
                    handler: FileLink, limit: int | None) -> int:
        frames = src.data_to_send()
        keep = frames[limit:] if limit is not None else []
        frames = frames[:limit] if limit is not None else frames
        src._out[:0] = keep  # not delivered yet: first in line next time
        for frame in frames:
            self.frames.append(frame_of(frame))
            dst.receive_data(frame)
            events: list[Event] = dst.events_received()
            for event in events:
                assert await handler.handle(event)
        return len(frames)

    async def step(self, limit: int | None = None) -> int:
        """Deliver up to ``limit`` frames each way (all by default); how many moved."""
        moved = await self._move(self.client, self.relay, self.receiver, limit)
        return moved + await self._move(self.relay, self.client, self.sender, limit)

    async def settle(self) -> None:
        while await self.step():
            pass


def _partials(store: ContentDir) -> list[str]:
    folder = store.root / "partial"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("order", ["one link first", "interleaved"])
def test_two_links_bringing_one_file_leave_no_partial_and_the_other_stops(
        tmp_path: Path, order: str) -> None:
    """Till 1 offers a file on both its links to Till 2 (each till dialled the other).
    Whichever link completes it, the other's transfer ends with ``file_have`` at its
    next chunk, chunks still on their way are dropped, and ``partial/`` is empty."""
    source, target = ContentDir(tmp_path / "one"), ContentDir(tmp_path / "two")
    ref, _ = source.add_bytes(b"%PDF-1.7\n" + os.urandom(9 * MAX_CHUNK))

    async def scenario() -> tuple[Wire, Wire]:
        a, b = Wire(source, target), Wire(source, target)
        for wire in (a, b):
            assert wire.sender.offer([ref]) == 1
            await wire.step()  # the offer, and the want from 0
        if order == "one link first":
            await b.step(limit=2)  # two of b's chunks land before a's transfer runs
            await a.settle()
        else:
            while await a.step(limit=1) + await b.step(limit=1):
                pass
        await b.settle()
        return a, b

    a, b = asyncio.run(scenario())
    assert target.has(ref.sha256) and target.read(ref.sha256, 0, ref.size) == \
        source.read(ref.sha256, 0, ref.size)
    assert _partials(target) == []
    for wire in (a, b):
        assert not wire.sender.busy and wire.held == [ref.sha256] and wire.refused == []
        assert wire.receiver.incoming.receiving == set()
        assert not [f for f in wire.frames if f["t"] == "file_refused"]
    # Neither link sent the file more than once.  The one that lagged stopped at its
    # first chunk after the file was whole: it sent the two chunks that landed and what
    # the window let it send on (four chunks), no more.
    assert max(a.sender.sent_bytes, b.sender.sent_bytes) <= ref.size
    if order == "one link first":
        assert b.sender.sent_bytes == 2 * MAX_CHUNK + WINDOW


def test_a_partial_of_a_file_held_whole_is_dropped(tmp_path: Path) -> None:
    """A partial left from a cut link whose file then came whole by another route goes at
    the next offer of it, or at the next scan of the store."""
    store = ContentDir(tmp_path / "files")
    ref, _ = store.add_bytes(b"%PDF-1.7\n" + os.urandom(1000))
    other, _ = store.add_bytes(b"%PDF-1.7\n" + os.urandom(1000))
    for sha in (ref.sha256, other.sha256):
        assert store.append(sha, 0, b"%PDF-1.7\n") is None  # whole: nothing written
        (store.root / "partial" / sha).write_bytes(b"%PDF-1.7\n")  # a cut link's leftover
    assert store.settled(ref.sha256) and _partials(store) == [other.sha256]
    assert store.drop_stale_partials() == [other.sha256] and _partials(store) == []
    absent = hashlib.sha256(b"absent").hexdigest()
    assert store.append(absent, 0, b"%PDF") == 4 and not store.settled(absent)
    assert store.drop_stale_partials() == [] and _partials(store) == [absent]


# -- two links into one receiver, any order of delivery ---------------------------------


@dataclass
class Way:
    """One link between the sending and the receiving till: its two ends' file state and
    the frames on their way each direction, in order (a websocket)."""

    out: Outgoing = field(default_factory=Outgoing)
    incoming: Incoming = field(default_factory=Incoming)
    to_receiver: list[tuple[str, int, int]] = field(default_factory=list)
    to_sender: list[tuple[str, int]] = field(default_factory=list)
    sent: int = 0
    corrupt: bool = False  # the next chunk written from this link has a byte changed


@dataclass
class Receiver:
    """The receiving till's directory: one partial file shared by its links."""

    source: bytes
    partial: bytearray
    whole: bool = False

    @property
    def sha(self) -> bytes:
        return hashlib.sha256(self.source).digest()

    def offered(self, way: Way) -> None:
        if self.whole:
            way.incoming.held(self.sha)
            way.to_sender.append(("have", 0))
            return
        held = len(self.partial)
        offset = way.incoming.want(self.sha, len(self.source), "application/pdf", held)
        way.to_sender.append(("want", offset))

    def chunk(self, way: Way, offset: int, length: int) -> None:
        """What ``FileLink._chunk`` does, the directory in memory."""
        sha = self.sha
        verdict = way.incoming.chunk(sha, offset, length)
        assert verdict != "unasked"
        if verdict == "resync":
            way.to_sender.append(("want", way.incoming.position(sha)))
        if verdict != "write":
            return
        if self.whole:  # ContentDir.append: whole already, by the other link
            way.incoming.held(sha)
            way.to_sender.append(("have", 0))
            return
        if len(self.partial) == offset:
            data = self.source[offset:offset + length]
            if way.corrupt:
                way.corrupt, data = False, bytes([data[0] ^ 1]) + data[1:]
            self.partial += data
        if not way.incoming.written(sha, len(self.partial)):
            way.to_sender.append(("want", len(self.partial)))
            return
        ok = bytes(self.partial) == self.source
        self.whole, self.partial = ok, bytearray()  # kept, or dropped
        answer = way.incoming.verified(sha, ok)
        assert answer == ("have" if ok else "again")
        way.to_sender.append(("have", 0) if ok else ("want", 0))

    def answer(self, way: Way, kind: str, offset: int) -> None:
        """The sender gets a want or a have, and sends the chunks due."""
        if kind == "have":
            way.out.finished(self.sha)
        else:
            way.out.wanted(self.sha, offset)
        for _, at, length in way.out.due():
            assert way.out.ahead <= WINDOW
            way.to_receiver.append(("chunk", at, length))
            way.sent += length


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 6 * MAX_CHUNK), held=st.integers(0, 6 * MAX_CHUNK),
       order=st.lists(st.integers(0, 3), max_size=200), corrupt=st.booleans())
# Link 0 starts again from 0 after its corrupted copy, out of step with link 1's chunks
# (which started at 1): its sender must go back to what the receiver holds, or it stalls.
@example(size=MAX_CHUNK + 1, held=1, order=[0, 1, 2, 0, 2, 0, 3, 1], corrupt=True)
def test_two_links_into_one_partial_end_whole_in_any_order(
        size: int, held: int, order: list[int], corrupt: bool) -> None:
    """However the frames of the two links interleave, whatever an earlier cut transfer
    left (at any length, not a chunk's), and if a chunk was corrupted (the file is then
    sent again from 0 on that link, out of step with the other's chunks), the file ends
    whole, nothing partial is left, both senders are answered, and no transfer stalls."""
    source = os.urandom(size)
    receiver = Receiver(source, bytearray(source[:min(held, size - 1)]))
    ways = [Way(corrupt=corrupt), Way()]
    for way in ways:
        assert way.out.offer(receiver.sha, size)
        way.to_receiver.append(("offer", 0, 0))

    def deliver(choice: int) -> bool:
        way = ways[choice % 2]
        queue = way.to_receiver if choice < 2 else way.to_sender
        if not queue:
            return False
        if choice < 2:
            kind, offset, length = way.to_receiver.pop(0)
            if kind == "offer":
                receiver.offered(way)
            else:
                receiver.chunk(way, offset, length)
        else:
            kind, offset = way.to_sender.pop(0)
            receiver.answer(way, kind, offset)
        return True

    for choice in order:
        deliver(choice)
    steps = 0
    while any(deliver(choice) for choice in range(4)):
        steps += 1
        assert steps < 1000, "the transfer does not end"
    assert receiver.whole and not receiver.partial
    for way in ways:
        assert not way.out.busy and way.incoming.receiving == set()
    # Each link sends at most the file once (twice after the corrupted chunk), plus a
    # window each time it went back.
    assert sum(way.sent for way in ways) <= (3 if corrupt else 2) * size + 4 * WINDOW
