"""What a till sends to a peer or the relay (``Till.entries_after``) is committed: a
batch in flight has moved the heads in memory and its rows are readable on the writer's
connection, but its commit may still fail, and then its seqs go to other entries.  An
entry sent before that would reach the relay as a fork of the device's own chain."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.peer.test_events import SHIFT, ready_to_sell, sale
from tillsync.peer.errors import TillsyncError
from tillsync.peer.store import Till


class FailingCommit:
    """The store's next database commit waits for ``release`` (``entered`` is set once it
    waits), then fails as a full disk would."""

    def __init__(self, till: Till, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered, self._gate = asyncio.Event(), asyncio.Event()
        self.armed = False
        monkeypatch.setattr(till._db, "commit", self._wrap(till._db.commit))

    def _wrap(self, real: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        async def commit(*args: Any) -> None:
            if self.armed:
                self.armed = False
                self.entered.set()
                await self._gate.wait()
                raise OSError(28, "No space left on device")
            await real(*args)
        return commit

    def release(self) -> None:
        self._gate.set()


async def test_an_entry_in_flight_is_not_sent_and_its_seq_can_go_to_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await Till.init(tmp_path / "t", name="T1")
    async with await Till.open(tmp_path / "t") as till:
        await ready_to_sell(till)
        first = await till.record("sale", sale(100))
        failing = FailingCommit(till, monkeypatch)
        failing.armed = True
        lost = asyncio.create_task(till.record("sale", sale(200)))
        await failing.entered.wait()  # its ops ran: memory holds it, the disk does not yet
        try:
            assert till.heads()[till.device_id] == first.seq + 1
            sent = await till.entries_after({}, 100)
            assert [e.client_id for e in sent] == [SHIFT, first.client_id]
        finally:
            failing.release()  # else closing the store would wait for the commit for ever
        with pytest.raises(TillsyncError):
            await lost
        again = await till.record("sale", sale(300))
        assert again.seq == first.seq + 1  # the failed entry's seq, now another entry's
        sent = await till.entries_after({till.device_id: first.seq}, 100)
        assert [(e.seq, e.client_id) for e in sent] == [(again.seq, again.client_id)]
