"""The relay's worker process (batch preparation) lives and dies with the relay."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from peer.store import Till
from tests.relay.processes import Relays, TillDir, in_thread

SHIFT = "5e0a7c3b-2f1d-4c6e-9a8b-7d6c5b4a3f21"


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_big_batch_is_prepared_by_a_worker_that_dies_with_the_relay(
        tmp_path: Path, relay_db: str | None) -> None:
    with Relays(tmp_path, relay_db) as relays:
        relay = relays.start()
        till = TillDir(tmp_path / "till", "Till 1")
        till.init(relay, "shop")
        till.put_many([("products", "bread", {"name": "Bread", "sku": "B1", "price": 320}),
                       ("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})])

        async def sell() -> None:
            async with await Till.open(till.path) as store:
                await store.record("shift_open", {"cashier_id": "ann", "opening_cash": 0},
                                   client_id=SHIFT)
                for _ in range(300):  # one push of 301 entries: above the worker threshold
                    await store.record("sale", {
                        "lines": [{"product_id": "bread", "qty": 1, "unit_price": 320}],
                        "payments": [{"method": "cash", "amount": 320}],
                        "shift_client_id": SHIFT})

        in_thread(sell)
        report = till.sync_json()
        assert report["accepted"] == 301 and report["pending"] == 0, report
        assert relay.proc is not None
        workers = children(relay.proc.pid)
        assert workers, "the relay prepared a 301-entry batch without its worker process"

        relay.kill()  # SIGKILL: the pool cannot tell its worker
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(p) for p in workers):
            time.sleep(0.1)
        assert not any(alive(p) for p in workers), "a worker outlived the relay"
