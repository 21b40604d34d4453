"""Master data through the relay: a new device gets one snapshot, not every change."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tillsync.peer.client import init_enrolled, sync_once
from tillsync.peer.store import Till
from tillsync.peer.sync.engine import RelayLink
from tillsync.relay.server import RelayConfig, running


async def test_a_fresh_till_gets_the_catalogue_as_one_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relay_db: str | None
) -> None:
    snapshots: list[int] = []
    original = RelayLink.send_snapshot

    def spy(self: RelayLink, data: bytes) -> None:
        snapshots.append(len(data))
        original(self, data)

    monkeypatch.setattr(RelayLink, "send_snapshot", spy)
    async with running(RelayConfig(tmp_path / "relay", port=0, db=relay_db)) as (relay, port):
        url = f"ws://127.0.0.1:{port}"
        office_code = await relay.new_code("shop", "Office", "backoffice")
        till_code = await relay.new_code("shop", "Till 2")
        await init_enrolled(tmp_path / "office", name="Office", url=url, code=office_code)
        await init_enrolled(tmp_path / "till2", name="Till 2", url=url, code=till_code)

        async with await Till.open(tmp_path / "office") as office:
            for start in range(0, 2000, 250):  # 2,000 products, 2,000+ Automerge changes
                await asyncio.gather(*(
                    office.put("products", f"p{i:05d}", {"name": f"Product {i}",
                                                        "sku": f"S{i}", "price": i})
                    for i in range(start, start + 250)))
            await sync_once(office)
            assert snapshots == []  # the office had a document: normal sync messages
            expected = office.all("products")

        async with await Till.open(tmp_path / "till2") as till:
            report = await sync_once(till)
            assert till.all("products") == expected
        assert len(snapshots) == 1 and report.doc_changes <= 4, (snapshots, report)
