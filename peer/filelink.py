"""Files over one link: the I/O around ``peer.sync.files`` for the till's relay round
(``peer.client``), a LAN link (``peer.lan.session``) and the relay (``relay.server``).

The link's frames are queued on its sans-I/O ``_Link``; the caller flushes them.  Disk
work (reading chunks, appending, hashing a whole file) runs in a thread, so the event
loop that records sales is never held by a file.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from tillsync.peer.files import MAX_FILE, MEDIA_TYPES, ContentDir, FileRef
from tillsync.peer.sync.engine import (
    FileChunk,
    FileHeld,
    FileOffered,
    FileRefused,
    FileWanted,
)
from tillsync.peer.sync.files import HASH_MISMATCH, MAX_TRIES, Incoming, Outgoing

# Codes of ``file_refused`` (schemas/protocol/README.md, "Files").
TOO_LARGE, WRONG_TYPE, NOT_ASKED = "too_large", "wrong_type", "not_asked"
# One writer per partial file in this process; a lock lives while a link holds it.
_appending: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class FilePolicy:
    """What a receiver takes: the largest file and the media types."""

    max_size: int = MAX_FILE
    media_types: tuple[str, ...] = MEDIA_TYPES

    def refusal(self, size: int, media_type: str) -> tuple[str, str] | None:
        if size > self.max_size:
            return TOO_LARGE, f"the file is {size} bytes; at most {self.max_size} are taken"
        if media_type not in self.media_types:
            return WRONG_TYPE, f"files of type {media_type[:100]!r} are not taken; taken " \
                               f"are {', '.join(self.media_types)}"
        return None


Notify = Callable[[str], Awaitable[None]]
Refused = Callable[[str, str, str], Awaitable[None]]


async def _nothing(sha256: str) -> None:
    return None


async def _ignore(sha256: str, code: str, message: str) -> None:
    return None


class FileLink:
    """Sends and receives files on one link (either or both ways)."""

    def __init__(self, link: object, store: ContentDir, policy: FilePolicy | None = None, *,
                 held: Notify = _nothing, received: Notify = _nothing,
                 refused: Refused = _ignore) -> None:
        self._link = link  # a peer.sync.engine link: send_file(t, sha256, **fields)
        self.store = store
        self.policy = policy or FilePolicy()
        self.out, self.incoming = Outgoing(), Incoming()
        self._held, self._received, self._refused = held, received, refused
        self.sent_bytes = self.received_bytes = 0
        self.resumed_at: dict[str, int] = {}  # the first offset each file was asked from

    @property
    def busy(self) -> bool:
        return self.out.busy

    def _send(self, t: str, sha256: bytes, **fields: object) -> None:
        self._link.send_file(t, sha256, **fields)  # type: ignore[attr-defined]

    def unoffered(self) -> list[FileRef]:
        """The files the store holds that were not offered on this link yet; partials
        of files held whole are dropped (blocking: a directory scan; run it in a
        thread)."""
        self.store.drop_stale_partials()
        known = self.out.known
        fresh = [self.store.ref(sha) for sha in self.store.hashes()
                 if bytes.fromhex(sha) not in known]
        return [r for r in fresh if r is not None]

    def offer(self, refs: Iterable[FileRef]) -> int:
        """Offer files not offered on this link yet; returns how many."""
        count = 0
        for ref in refs:
            sha = bytes.fromhex(ref.sha256)
            if self.out.offer(sha, ref.size):
                self._send("file_offer", sha, size=ref.size, type=ref.media_type)
                count += 1
        return count

    async def pump(self) -> None:
        """Queue the chunks due now (a window's worth of the file being sent)."""
        for sha, offset, length in self.out.due():
            data = await asyncio.to_thread(self.store.read, sha.hex(), offset, length)
            if len(data) != length:  # the file changed under us: it cannot go
                self.out.finished(sha)
                continue
            self._send("file_chunk", sha, offset=offset, data=data)
            self.sent_bytes += length

    async def handle(self, event: object) -> bool:
        """Act on a file event; False if ``event`` is no file event."""
        if isinstance(event, FileWanted):
            self.resumed_at.setdefault(event.sha256.hex(), event.offset)
            self.out.wanted(event.sha256, event.offset)
        elif isinstance(event, FileHeld):
            if self.out.finished(event.sha256):
                await self._held(event.sha256.hex())
        elif isinstance(event, FileRefused):
            if self.out.finished(event.sha256):
                await self._refused(event.sha256.hex(), event.code, event.message)
        elif isinstance(event, FileOffered):
            await self._offered(event)
        elif isinstance(event, FileChunk):
            await self._chunk(event)
        else:
            return False
        await self.pump()
        return True

    async def _offered(self, event: FileOffered) -> None:
        sha, name = event.sha256, event.sha256.hex()
        problem = self.policy.refusal(event.size, event.media_type)
        if problem is not None:
            self._send("file_refused", sha, code=problem[0], message=problem[1])
        elif await asyncio.to_thread(self.store.settled, name):
            self.incoming.held(sha)
            self._send("file_have", sha)
        else:
            held = await asyncio.to_thread(self.store.received, name)
            offset = self.incoming.want(sha, event.size, event.media_type, held)
            self._send("file_want", sha, offset=offset)

    async def _chunk(self, event: FileChunk) -> None:
        sha, name = event.sha256, event.sha256.hex()
        verdict = self.incoming.chunk(sha, event.offset, len(event.data))
        if verdict in ("late", "stale"):
            return
        if verdict == "unasked":
            self._send("file_refused", sha, code=NOT_ASKED,
                       message="a chunk of a file not asked for on this link; offer it first")
            return
        if verdict == "resync":
            self._send("file_want", sha, offset=self.incoming.position(sha))
            return
        lock = _appending.setdefault(name, asyncio.Lock())
        async with lock:
            length = await asyncio.to_thread(self.store.append, name, event.offset,
                                             event.data)
            if length is None:  # whole already, by another link: stop this transfer
                self.incoming.held(sha)
                self._send("file_have", sha)
                return
            self.received_bytes += len(event.data)
            if not self.incoming.written(sha, length):
                self._send("file_want", sha, offset=length)
                return
            size, media_type = self.incoming.expects(sha)
            outcome = await asyncio.to_thread(self.store.finish, name, size, media_type)
        if outcome == "type":
            self.incoming.verified(sha, True)  # done with it, not kept
            self._send("file_refused", sha, code=WRONG_TYPE,
                       message=f"the file's bytes are not {media_type}; nothing was kept")
            return
        answer = self.incoming.verified(sha, outcome == "ok")
        if answer == "have":
            self._send("file_have", sha)
            await self._received(name)
        elif answer == "again":
            self._send("file_want", sha, offset=0)
        else:
            self._send("file_refused", sha, code=HASH_MISMATCH,
                       message=f"the file's bytes did not hash to its name {MAX_TRIES} "
                               "times; nothing was kept")
