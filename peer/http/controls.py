"""Manual sync controls: a round with the relay now, and a full resync."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from tillsync.peer import client
from tillsync.peer.http.errors import ApiError
from tillsync.peer.store import Till


class Controls:
    """Rounds asked for through the API, one at a time (the daemon's own relay loop
    runs beside them: rounds are idempotent, and a receipt position only moves on)."""

    def __init__(self, till: Till, relay: str | None) -> None:
        self.till, self.relay = till, relay
        self._lock = asyncio.Lock()

    async def round(self, rewind: bool) -> dict[str, Any]:
        """One round; ``rewind`` first sets the receipt position back to the start, so the
        relay sends its whole receipt stream again (each checked against its signed
        chain; receipts already held are kept, and a position only moves forward)."""
        till = self.till
        async with self._lock:
            before = {r["client_id"]: r["status"] for r in await till.receipts()}
            position = till.receipts_position()[0]
            if rewind:
                await till.store_receipts([], 0, bytes(32), "", rewind=True)
            try:
                report = await client.sync_once(till, self.relay)
            except client.SyncError as exc:
                raise ApiError(502, exc.code, str(exc)) from None
            answer: dict[str, Any] = asdict(report)
            after = {r["client_id"]: r["status"] for r in await till.receipts()}
            lost = sorted(c for c, status in before.items()
                          if c not in after or (status == "accepted"
                                                and after[c] != "accepted"))
            now = till.receipts_position()[0]
            answer.update(full=rewind, receipts_position_before=position,
                          receipts_position=now, verified=not lost and now >= position,
                          lost=lost)
            return answer
