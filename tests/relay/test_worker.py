"""The relay's worker process (batch preparation) lives and dies with the relay."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import msgpack
import pytest

from tests.relay.processes import Relays, TillDir, in_thread
from tillsync.peer.identity import DeviceKey
from tillsync.peer.log import GENESIS_PREV, Entry, seal, seal_bytes
from tillsync.peer.store import Till
from tillsync.relay.prepare import adopt, pack_for_worker, prepare, prepare_packed
from tillsync.tools.bench_relay import children
from tillsync.tools.workload import products_for_sales, sale_body

SHIFT = "5e0a7c3b-2f1d-4c6e-9a8b-7d6c5b4a3f21"


def _log() -> list[Entry]:
    """Entries of every outcome ``prepare`` has: sales (some weighed), a shift, a body
    that is not msgpack, one that breaks its schema, an unknown kind, a client_id that
    is not a lowercase UUID v4, a body not in canonical form, a negative line."""
    key, rng = DeviceKey.generate(), random.Random(7)
    catalogue = products_for_sales()
    pieces = [p for p in catalogue if p.startswith("piece-")]
    weighed = [p for p in catalogue if p.startswith("kg-")]
    out: list[Entry] = []

    def add(kind: str, body: dict[str, object] | None = None, raw: bytes = b"",
            client_id: str | None = None) -> None:
        client_id = client_id or str(uuid.UUID(int=rng.getrandbits(128), version=4))
        fields = {"client_id": client_id, "device_id": "d1", "seq": len(out) + 1,
                  "prev": out[-1].hash if out else GENESIS_PREV, "kind": kind,
                  "client_created_at": "2026-01-01T00:00:00.000Z", "ticket": None}
        out.append(seal(key, body=body, **fields) if body is not None
                   else seal_bytes(key, body_bytes=raw, **fields))

    add("shift_open", {"cashier_id": "ann", "opening_cash": 0})
    for _ in range(20):
        add("sale", sale_body(rng, catalogue, pieces, weighed, SHIFT))
    add("sale", raw=b"\xc1 not msgpack")
    add("sale", {"lines": "three loaves", "shift_client_id": SHIFT})
    add("teleport", {"to": "mars"})
    add("sale", sale_body(rng, catalogue, pieces, weighed, SHIFT), client_id="C-1")
    add("sale", raw=msgpack.packb(dict(reversed(sale_body(rng, catalogue, pieces, weighed,
                                                          SHIFT).items()))))
    negative = sale_body(rng, catalogue, pieces, weighed, SHIFT)
    negative["lines"] = [{"product_id": "piece-001", "qty": 1, "unit_price": 1, "discount": 2}]
    add("sale", negative)
    return out


def test_the_worker_finds_what_preparing_here_finds() -> None:
    """What the worker answers for a batch (hashes, problems, line amounts; the relay
    decodes the bodies itself) is what ``prepare`` finds in the relay's own process."""
    entries = _log()
    here = prepare(entries)
    fresh = [Entry(e.client_id, e.device_id, e.seq, e.prev, e.kind, e.client_created_at,
                   e.ticket, e.body_bytes, e.sig) for e in entries]  # no cached hash
    there = adopt(fresh, prepare_packed(pack_for_worker(fresh)))
    problems = []
    for mine, theirs in zip(entries, fresh, strict=True):
        assert theirs.__dict__["hash"] == mine.hash
        body, problem, lines = here[id(mine)]
        got_body, got_problem, got_lines = there[id(theirs)]
        assert got_problem == problem
        problems.append(problem[0] if problem else None)
        if problem is None:
            assert got_body == body
            assert [tuple(x) for x in got_lines or []] == list(lines or [])
    assert problems == [None] * 21 + ["malformed_body", "schema", "unknown_kind",
                                      "bad_client_id", "not_canonical", "negative_line"]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("worker", [True, False], ids=["prepare-worker", "event-loop"])
def test_a_big_batch_is_prepared_by_a_worker_that_dies_with_the_relay(
        tmp_path: Path, relay_db: str | None, worker: bool) -> None:
    """With ``--prepare-worker 200`` a 301-entry batch goes to a worker process that
    dies with the relay; without it the relay prepares it itself and starts none."""
    with Relays(tmp_path, relay_db) as relays:
        relay = relays.start(extra=["--prepare-worker", "200"] if worker else [])
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
        workers = set(children(relay.proc.pid, ""))  # every process the relay started
        if not worker:
            assert not workers, "a worker process without --prepare-worker"
            return
        assert workers, "the relay prepared a 301-entry batch without its worker process"

        relay.kill()  # SIGKILL: the pool cannot tell its worker
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(p) for p in workers):
            time.sleep(0.1)
        assert not any(alive(p) for p in workers), "a worker outlived the relay"
