"""Master data through the relay: a new device gets one snapshot, not every change."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tillsync.peer.client import init_enrolled, sync_once
from tillsync.peer.store import DB_FILE, Till
from tillsync.peer.sync.engine import RelayLink
from tillsync.relay.server import RelayConfig, running
from tillsync.tools.bench_store import document_sizes


async def test_a_fresh_till_gets_the_catalogue_as_one_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relay_db: str | None
) -> None:
    snapshots: list[int] = []
    doc_bytes: dict[str, int] = {}  # device -> bytes of the relay's doc messages to it
    original, original_doc = RelayLink.send_snapshot, RelayLink.send_doc

    def spy(self: RelayLink, data: bytes) -> None:
        snapshots.append(len(data))
        original(self, data)

    def spy_doc(self: RelayLink, data: bytes) -> None:
        doc_bytes[self.device] = doc_bytes.get(self.device, 0) + len(data)
        original_doc(self, data)

    monkeypatch.setattr(RelayLink, "send_snapshot", spy)
    monkeypatch.setattr(RelayLink, "send_doc", spy_doc)
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
            fresh = till.device_id
        assert len(snapshots) == 1 and report.doc_changes <= 4, (snapshots, report)
        # After the snapshot the relay sends none of its changes again: its sync
        # messages to the new till carry heads and an empty filter, a few hundred bytes
        # (they were the whole history, ~40x the snapshot, when the till's first message
        # went out before the snapshot had arrived).
        assert doc_bytes.get(fresh, 0) < snapshots[0] / 20, (doc_bytes, snapshots)

        # The till keeps it as its own snapshot (written once, no change chunks), and
        # reopened holds the catalogue.
        snapshot_bytes, chunks, _ = document_sizes(tmp_path / "till2" / DB_FILE)
        assert (snapshot_bytes, chunks) == (snapshots[0], 0)
        async with await Till.open(tmp_path / "till2") as till:
            assert till.all("products") == expected
            assert not till.master.is_genesis()
