"""What one LAN link sends of the master-data document, and when (sans I/O, no clock).

A till sends its own edits to every peer at once, as Automerge sync messages in
``edit`` frames, and answers every sync message it receives.  Changes that reached it
from another link or from the relay are not synced on at once: in a full mesh every
peer has them from their author already.  After ``ANNOUNCE_DELAY`` (twice that on the
till whose device id is the greater, so that of two tills only one usually speaks) it
sends, to a peer not known to hold them, a *heads message*: the document's heads and
nothing else (``MasterData.heads_message``).  A peer that holds those heads ignores it;
one that lacks any applies it, and its answer asks for them (see
schemas/protocol/README.md, "Symmetric sync").

An answer that says only "I hold exactly these heads, and so do you" (heads, one
'have' of those heads with an empty Bloom filter, nothing else: what Automerge answers
an edit applied) goes as a heads message too, 34 bytes shorter; a till receiving a
heads message whose heads it all holds applies the full message it stands for
(``in_sync_message``) without answering it.

A peer is known to hold the heads it last stated on the link, and those of every edit
pushed here (``edit`` frame) by a till that is linked with it: an author sends its
edit to every till it is linked with at once, and syncs in full with each link that
comes up.  Who is linked with whom comes from the peers' ``links`` frames (``Mesh``);
only a link both ends state counts, and a peer stating a link gone makes this till look
again at what that peer is known to hold, so an edit sent on a link that was dying
reaches the peer by an announcement instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tillsync.peer.master.document import (
    _SYNC_MESSAGE,
    MasterData,
    _leb,
    _Truncated,
    _uleb,
    heads_only,
    message_heads,
)

ANNOUNCE_DELAY = 0.05  # seconds


def in_sync_heads(data: bytes) -> list[bytes] | None:
    """The heads of an Automerge sync message that states them and nothing else but a
    'have' of the same heads with an empty Bloom filter (no need, no changes): what a
    till answers a message after which both ends hold the same heads.  None for any
    other message."""
    try:
        count, pos = _uleb(data, 1)
        heads = data[pos:pos + 32 * count]
        pos += 32 * count
        if data[0] not in _SYNC_MESSAGE or len(heads) != 32 * count or \
                data[pos:pos + 2] != b"\x00\x01":  # no need, one have
            return None
        synced, pos = _uleb(data, pos + 2)
        if synced != count or data[pos:pos + 32 * count] != heads or \
                data[pos + 32 * count:] != b"\x00\x00":  # empty Bloom filter, no changes
            return None
    except _Truncated:
        return None
    return [heads[i:i + 32] for i in range(0, len(heads), 32)]


def in_sync_message(heads: list[bytes]) -> bytes:
    """The sync message ``in_sync_heads`` reads these heads from (sorted, as Automerge
    writes them), as Automerge encodes it."""
    stated = _leb(len(heads)) + b"".join(sorted(heads))
    return bytes([_SYNC_MESSAGE[1]]) + stated + b"\x00\x01" + stated + b"\x00\x00"


def _heads_message(heads: list[bytes]) -> bytes:
    """``MasterData.heads_message`` for these heads."""
    return bytes([_SYNC_MESSAGE[0]]) + _leb(len(heads)) + b"".join(sorted(heads)) + \
        b"\0\0\0"


class Mesh:
    """What a till knows of its LAN's links, shared by the ``DocSync`` of every link."""

    def __init__(self) -> None:
        self._mine: dict[str, int] = {}  # device -> this till's ready links to it
        self._links: dict[str, frozenset[str]] = {}  # device -> the devices it says it has
        self._pushed: dict[str, set[bytes]] = {}  # device -> heads of its last edit frame
        self._listeners: list[Callable[[], None]] = []

    @property
    def mine(self) -> frozenset[str]:
        """The devices this till has a ready link with."""
        return frozenset(self._mine)

    def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever who is linked with whom changes (until ``unlisten``)."""
        self._listeners.append(wake)

    def unlisten(self, wake: Callable[[], None]) -> None:
        if wake in self._listeners:
            self._listeners.remove(wake)

    def up(self, device: str) -> None:
        """A link with ``device`` is ready."""
        self._mine[device] = self._mine.get(device, 0) + 1
        if self._mine[device] == 1:
            self._changed()

    def down(self, device: str) -> None:
        """A ready link with ``device`` is gone; with its last one, what it said goes."""
        left = self._mine.get(device, 0) - 1
        if left > 0:
            self._mine[device] = left
            return
        self._mine.pop(device, None)
        self._links.pop(device, None)
        self._changed()

    def stated(self, device: str, devices: Iterable[str]) -> None:
        """``device`` says it has a link with each of ``devices`` (a ``links`` frame)."""
        links = frozenset(devices)
        if device in self._mine and self._links.get(device) != links:
            self._links[device] = links
            self._changed()

    def pushed(self, device: str, heads: set[bytes]) -> None:
        """``device`` pushed its own edit here, with these heads (an ``edit`` frame)."""
        self._pushed[device] = heads

    def held_by(self, peer: str) -> set[bytes]:
        """Heads ``peer`` holds, or is being sent, by the edits of the tills linked with it
        (both ends saying so) that pushed an edit here."""
        held: set[bytes] = set()
        for author, heads in self._pushed.items():
            if author != peer and peer in self._links.get(author, ()) \
                    and author in self._links.get(peer, ()):
                held |= heads
        return held

    def _changed(self) -> None:
        for wake in list(self._listeners):
            wake()


class DocSync:
    """The document side of one link.  Use::

        data = sync.received(data, master, edit=...)  # a 'doc' or 'edit' frame came
        ... apply data to the link's SyncState and store it, then sync.applied()
        devices = sync.links_due()  # on every push: a 'links' frame, if not None
        message, wake_at = sync.outgoing(master, state, now)  # on every push
        ... send it as 'edit' if sync.edit, else as 'doc'
    """

    def __init__(self, master: MasterData, *, first: bool, mesh: Mesh | None = None,
                 peer: str = "") -> None:
        self._delay = ANNOUNCE_DELAY * (1 if first else 2)
        self._owed = True  # a full sync message: at the start, and after each received
        self._edits = master.local_edits
        self._peer: set[bytes] = set()  # heads the peer is known to hold
        self._stated: set[bytes] = set()  # the heads last stated to the peer
        self._announce_at: float | None = None
        self._mesh = mesh if mesh is not None else Mesh()
        self._device = peer
        self._links_sent: frozenset[str] | None = None
        self._pushed: set[bytes] | None = None  # heads of an edit frame being applied
        self._answer = True  # whether the message being applied is owed an answer
        self.edit = False  # whether the last message outgoing gave is this till's edit

    def received(self, data: bytes, master: MasterData, *, edit: bool = False) -> bytes:
        """Note a 'doc' (or, ``edit``, an 'edit') message from the peer; returns the
        message to apply.  A heads message stating heads this till all holds stands for
        the full message saying the peer holds those and nothing more: that is applied
        (the heads message itself must not be: its empty 'have' would make Automerge hold
        back this till's own changes), and owes no answer."""
        heads = message_heads(data)
        self._answer = True
        if heads is None:
            return data  # not readable here: Automerge says what is wrong with it
        self._peer = heads
        self._pushed = heads if edit else None
        if heads_only(data) and heads <= set(master.heads()):
            self._answer = False
            return in_sync_message(list(heads))
        return data

    def applied(self) -> None:
        """The peer's message was applied: a full message is owed in answer, unless it
        was a heads message."""
        if self._pushed is not None:
            self._mesh.pushed(self._device, self._pushed)
            self._pushed = None
        self._owed = self._owed or self._answer

    def links_due(self) -> list[str] | None:
        """The devices to state in a 'links' frame, when they are not what was stated."""
        mine = self._mesh.mine
        if mine == self._links_sent:
            return None
        self._links_sent = mine
        return sorted(mine)

    def outgoing(self, master: MasterData, state: Any, now: float
                 ) -> tuple[bytes | None, float | None]:
        """The message to send now, if any, and when to call again for an announcement
        that is not due yet (None: no need)."""
        self.edit = False
        if self._owed or master.local_edits != self._edits:
            self.edit = master.local_edits != self._edits
            self._owed, self._edits = False, master.local_edits
            message = master.sync_message(state)
            if message is not None:
                self._stated = message_heads(message) or set()
                synced = in_sync_heads(message)
                if synced is not None:
                    message = _heads_message(synced)  # what it stands for, shorter
            return message, None
        heads = set(master.heads())
        if heads == self._stated or heads <= self._peer or \
                heads <= self._peer | self._mesh.held_by(self._device):
            self._announce_at = None
            return None, None
        if self._announce_at is None:
            self._announce_at = now + self._delay
        if now < self._announce_at:
            return None, self._announce_at
        self._announce_at = None
        self._stated = heads
        return master.heads_message(), None
