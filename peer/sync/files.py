"""File transfer on one link, sans I/O: who sends which bytes next, and what an arriving
frame means.  The frames (``schemas/protocol/README.md``, "Files")::

    sender                                   receiver
      file_offer {sha256, size, type}   ->
                <-  file_have {sha256}                  it holds the file already
                <-  file_refused {sha256, code, message} too big, a type it does not take
                <-  file_want {sha256, offset}           send from offset (what it holds)
      file_chunk {sha256, offset, data} ->  (up to WINDOW bytes unacknowledged)
                <-  file_want {sha256, offset}           after each chunk: holds offset bytes
      ...the last chunk:
                <-  file_have                            the whole file hashed to sha256
                <-  file_want {sha256, 0}                it did not: dropped, sent again
                <-  file_refused hash_mismatch            after MAX_TRIES such tries

A file may come whole by another link while it is being received on this one (two
tills dial each other, two tills send the relay the same receipt): the next chunk is
answered ``file_have``, the sender stops, and chunks still on their way are dropped.

A cut link loses nothing the receiver wrote: the next offer is answered with the length
it holds, and the sender goes on from there.  ``Outgoing`` and ``Incoming`` only keep
the state; the I/O layer (``peer.filelink``) reads and writes the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tillsync.peer.sync.frames import MAX_CHUNK

WINDOW = 4 * MAX_CHUNK  # bytes a sender may have on their way, unacknowledged, on a link
MAX_TRIES = 3  # whole transfers of one file that fail its hash before it is refused
HASH_MISMATCH = "hash_mismatch"


@dataclass
class _Send:
    size: int
    started: bool = False
    acked: int = 0  # the receiver holds this many bytes
    sent: int = 0  # chunks up to here are on their way
    start: int = 0  # where the chunks on their way started: one every MAX_CHUNK from here


class Outgoing:
    """The sending side: files offered on this link, and the chunks due next."""

    def __init__(self) -> None:
        self._offered: dict[bytes, _Send] = {}  # offered, no final answer yet
        self.done: set[bytes] = set()  # answered: held or refused

    @property
    def busy(self) -> bool:
        """Offers not answered for good yet."""
        return bool(self._offered)

    @property
    def known(self) -> set[bytes]:
        """Every file offered on this link, answered or not."""
        return set(self._offered) | self.done

    def offer(self, sha256: bytes, size: int) -> bool:
        """Whether to send an offer for this file now (not offered on this link yet)."""
        if sha256 in self._offered or sha256 in self.done:
            return False
        self._offered[sha256] = _Send(size)
        return True

    def wanted(self, sha256: bytes, offset: int) -> None:
        """The receiver holds ``offset`` bytes: acknowledged up to there.  A first want,
        or one that does not move forward (a file that failed its hash, a chunk it could
        not place), sets the sending point back to ``offset``; so does one that no chunk
        on its way starts at (another link wrote part of the file: the receiver would
        drop every chunk on its way).  One beyond what was sent goes on from there."""
        send = self._offered.get(sha256)
        if send is None or offset > send.size:
            return
        if (not send.started or offset <= send.acked or offset >= send.sent
                or (offset - send.start) % MAX_CHUNK):
            send.started, send.start, send.sent = True, offset, offset
        send.acked = offset

    def finished(self, sha256: bytes) -> bool:
        """Held or refused: nothing more goes for it on this link.  False if it was not
        being offered (a late answer to a file answered already)."""
        if self._offered.pop(sha256, None) is None:
            return False
        self.done.add(sha256)
        return True

    @property
    def ahead(self) -> int:
        """Bytes sent that the receiver has not acknowledged yet, over every file."""
        return sum(send.sent - send.acked for send in self._offered.values()
                   if send.started)

    def due(self) -> list[tuple[bytes, int, int]]:
        """(sha256, offset, length) of the chunks to send now: one file after the
        other (all of a file's chunks before the next file's first), at most ``WINDOW``
        bytes unacknowledged over all of them."""
        out = []
        ahead = self.ahead
        for sha, send in self._offered.items():
            if not send.started or send.sent >= send.size:
                continue
            while send.sent < send.size and ahead < WINDOW:
                length = min(MAX_CHUNK, send.size - send.sent)
                out.append((sha, send.sent, length))
                send.sent += length
                ahead += length
            break  # one file at a time: its chunks before the next file's
        return out


@dataclass
class _Receive:
    size: int
    media_type: str
    next: int = 0
    told: int = -1  # the offset of the last file_want sent for it
    failures: int = 0


class Incoming:
    """The receiving side: what was asked for, and where each file stands."""

    def __init__(self) -> None:
        self._wanted: dict[bytes, _Receive] = {}
        self.done: set[bytes] = set()  # answered on this link: held or refused

    @property
    def receiving(self) -> set[bytes]:
        """The files asked for and not answered for good yet."""
        return set(self._wanted)

    def want(self, sha256: bytes, size: int, media_type: str, held: int) -> int:
        """Ask for a file of which ``held`` bytes are here already; returns the offset
        to ask from (0 if what is held is longer than the file says)."""
        offset = held if held < size else 0
        self.done.discard(sha256)
        state = self._wanted.get(sha256)
        if state is None or state.size != size:
            state = self._wanted[sha256] = _Receive(size, media_type)
        state.next = state.told = offset
        return offset

    def expects(self, sha256: bytes) -> tuple[int, str]:
        """The size and media type offered of a file being received."""
        state = self._wanted[sha256]
        return state.size, state.media_type

    def chunk(self, sha256: bytes, offset: int, length: int) -> str:
        """What to do with a chunk that came:

        - "write": it is the next one;
        - "resync": it is not (or runs past the file's size): ask from ``position``;
        - "stale": it is not, and the sender was asked from ``position`` already: a
          chunk sent before that answer reached it, dropped unanswered (answering each
          one would set the sender back once per chunk on its way);
        - "late": the file was answered on this link, dropped unanswered;
        - "unasked": no file is being received by that hash."""
        state = self._wanted.get(sha256)
        if state is None:
            return "late" if sha256 in self.done else "unasked"
        if offset + length > state.size:
            state.told = state.next
            return "resync"
        if offset != state.next:
            if state.told == state.next:
                return "stale"
            state.told = state.next
            return "resync"
        return "write"

    def written(self, sha256: bytes, length_now: int) -> bool:
        """The chunk is written (or, if another link wrote there first, not) and the
        file is ``length_now`` bytes; True when whole, else the sender is asked from
        ``length_now``."""
        state = self._wanted[sha256]
        state.next = length_now
        if length_now >= state.size:
            return True
        state.told = length_now
        return False

    def position(self, sha256: bytes) -> int:
        return self._wanted[sha256].next

    def held(self, sha256: bytes) -> None:
        """The whole file is here (it came by another link): nothing more is asked."""
        self._close(sha256)

    def _close(self, sha256: bytes) -> None:
        self._wanted.pop(sha256, None)
        self.done.add(sha256)

    def verified(self, sha256: bytes, ok: bool) -> str:
        """After the whole file was hashed: "have", "again" (ask from 0) or "refused"."""
        state = self._wanted[sha256]
        if ok:
            self._close(sha256)
            return "have"
        state.failures += 1
        state.next = state.told = 0
        if state.failures >= MAX_TRIES:
            self._close(sha256)  # answered for good: late chunks are dropped
            return "refused"
        return "again"
