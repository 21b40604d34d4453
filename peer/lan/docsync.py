"""What one LAN link sends of the master-data document, and when (sans I/O, no clock).

A till sends its own edits to every peer at once, as Automerge sync messages, and
answers every sync message it receives.  Changes that reached it from another link or
from the relay are not synced on at once: in a full mesh every peer has them from their
author already.  After ``ANNOUNCE_DELAY`` (twice that on the till whose device id is the
greater, so that of two tills only one usually speaks) it sends, to a peer not known to
hold them, a *heads message*: the document's heads and nothing else
(``MasterData.heads_message``).  A peer that holds those heads ignores it; one that
lacks any applies it, and its answer asks for them (see schemas/protocol/README.md,
"Symmetric sync").
"""

from __future__ import annotations

from typing import Any

from tillsync.peer.master.document import MasterData, heads_only, message_heads

ANNOUNCE_DELAY = 0.05  # seconds


class DocSync:
    """The document side of one link.  Use::

        if sync.received(data, master):  # a 'doc' frame came
            ... apply it to the link's SyncState and store it, then sync.applied()
        message, wake_at = sync.outgoing(master, state, now)  # on every push
    """

    def __init__(self, master: MasterData, *, first: bool) -> None:
        self._delay = ANNOUNCE_DELAY * (1 if first else 2)
        self._owed = True  # a full sync message: at the start, and after each received
        self._edits = master.local_edits
        self._peer: set[bytes] = set()  # heads the peer is known to hold
        self._stated: set[bytes] = set()  # the heads last stated to the peer
        self._announce_at: float | None = None

    def received(self, data: bytes, master: MasterData) -> bool:
        """Note a 'doc' message from the peer; whether it must be applied (a heads
        message stating heads this till holds must not be: an empty 'have' would make
        Automerge hold back this till's own changes)."""
        heads = message_heads(data)
        if heads is None:
            return True  # not readable here: Automerge says what is wrong with it
        self._peer = heads
        return not (heads_only(data) and heads <= set(master.heads()))

    def applied(self) -> None:
        """The peer's message was applied: a full message is owed in answer."""
        self._owed = True

    def outgoing(self, master: MasterData, state: Any, now: float
                 ) -> tuple[bytes | None, float | None]:
        """The message to send now, if any, and when to call again for an announcement
        that is not due yet (None: no need)."""
        if self._owed or master.local_edits != self._edits:
            self._owed, self._edits = False, master.local_edits
            message = master.sync_message(state)
            if message is not None:
                self._stated = message_heads(message) or set()
            return message, None
        heads = set(master.heads())
        if heads <= self._peer or heads == self._stated:
            self._announce_at = None
            return None, None
        if self._announce_at is None:
            self._announce_at = now + self._delay
        if now < self._announce_at:
            return None, self._announce_at
        self._announce_at = None
        self._stated = heads
        return master.heads_message(), None
