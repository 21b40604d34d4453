"""File transfer on one link, sans I/O: who sends which bytes next, and what an arriving
frame means.  The frames (``schemas/protocol/README.md``, "Files")::

    sender                                   receiver
      file_offer {sha256, size, type}   ->
                <-  file_have {sha256}                  it holds the file already
                <-  file_refused {sha256, code, message} too big, a type it does not take
                <-  file_want {sha256, offset}           send from offset (what it holds)
      file_chunk {sha256, offset, data} ->  (up to WINDOW bytes ahead of the last want)
                <-  file_want {sha256, offset}           after each chunk: holds offset bytes
      ...the last chunk:
                <-  file_have                            the whole file hashed to sha256
                <-  file_want {sha256, 0}                it did not: dropped, sent again
                <-  file_refused hash_mismatch            after MAX_TRIES such tries

A cut link loses nothing the receiver wrote: the next offer is answered with the length
it holds, and the sender goes on from there.  ``Outgoing`` and ``Incoming`` only keep
the state; the I/O layer (``peer.filelink``) reads and writes the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tillsync.peer.sync.frames import MAX_CHUNK

WINDOW = 4 * MAX_CHUNK  # bytes a sender may have sent beyond the receiver's last want
MAX_TRIES = 3  # whole transfers of one file that fail its hash before it is refused
HASH_MISMATCH = "hash_mismatch"


@dataclass
class _Send:
    size: int
    started: bool = False
    acked: int = 0  # the receiver holds this many bytes
    sent: int = 0  # chunks up to here are on their way


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
        not place), sets the sending point back to ``offset``."""
        send = self._offered.get(sha256)
        if send is None or offset > send.size:
            return
        if not send.started or offset <= send.acked:
            send.started, send.acked, send.sent = True, offset, offset
        else:
            send.acked, send.sent = offset, max(send.sent, offset)

    def finished(self, sha256: bytes) -> None:
        """Held or refused: nothing more goes for it on this link."""
        if self._offered.pop(sha256, None) is not None:
            self.done.add(sha256)

    def due(self) -> list[tuple[bytes, int, int]]:
        """(sha256, offset, length) of the chunks to send now: the file being sent
        first, one at a time, at most ``WINDOW`` bytes past the receiver's last want."""
        out = []
        for sha, send in self._offered.items():
            if not send.started or send.sent >= send.size:
                continue
            while send.sent < send.size and send.sent - send.acked < WINDOW:
                length = min(MAX_CHUNK, send.size - send.sent)
                out.append((sha, send.sent, length))
                send.sent += length
            break  # one file at a time: its chunks before the next file's
        return out


@dataclass
class _Receive:
    size: int
    media_type: str
    next: int = 0
    failures: int = 0


class Incoming:
    """The receiving side: what was asked for, and where each file stands."""

    def __init__(self) -> None:
        self._wanted: dict[bytes, _Receive] = {}

    def want(self, sha256: bytes, size: int, media_type: str, held: int) -> int:
        """Ask for a file of which ``held`` bytes are here already; returns the offset
        to ask from (0 if what is held is longer than the file says)."""
        offset = held if held < size else 0
        state = self._wanted.get(sha256)
        if state is None or state.size != size:
            state = self._wanted[sha256] = _Receive(size, media_type)
        state.next = offset
        return offset

    def expects(self, sha256: bytes) -> tuple[int, str]:
        """The size and media type offered of a file being received."""
        state = self._wanted[sha256]
        return state.size, state.media_type

    def chunk(self, sha256: bytes, offset: int, length: int) -> str:
        """"write" (the chunk is the next one), "resync" (ask from ``position``
        again), or "unasked" (no file is being received by that hash)."""
        state = self._wanted.get(sha256)
        if state is None:
            return "unasked"
        if offset != state.next or offset + length > state.size:
            return "resync"
        return "write"

    def written(self, sha256: bytes, length_now: int) -> bool:
        """The chunk is written and the file is ``length_now`` bytes; True when whole."""
        state = self._wanted[sha256]
        state.next = length_now
        return length_now >= state.size

    def position(self, sha256: bytes) -> int:
        return self._wanted[sha256].next

    def verified(self, sha256: bytes, ok: bool) -> str:
        """After the whole file was hashed: "have", "again" (ask from 0) or "refused"."""
        state = self._wanted[sha256]
        if ok:
            del self._wanted[sha256]
            return "have"
        state.failures += 1
        state.next = 0
        if state.failures >= MAX_TRIES:
            del self._wanted[sha256]
            return "refused"
        return "again"
