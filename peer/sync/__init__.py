"""The sync protocol, sans I/O: one engine used by till and relay alike.

``frames`` turns bytes into checked messages and back; ``engine`` holds the state of one
link (handshake, then log, receipts and document sync) and hands out events and bytes
to send.  asyncio and websockets live in ``peer.client`` and ``relay.server``; the
protocol itself is written down in ``schemas/protocol/``.
"""

from tillsync.peer.sync.engine import ClientLink, Event, RelayLink
from tillsync.peer.sync.frames import PROTOCOL_VERSION, ProtocolError

__all__ = ["PROTOCOL_VERSION", "ClientLink", "Event", "ProtocolError", "RelayLink"]
