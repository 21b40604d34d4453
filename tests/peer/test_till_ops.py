"""A till daemon's operator endpoints (``peer.http.ops``): ``/metrics`` scraped while a
real ``peer run`` sells and syncs, its figures checked against the till's own status;
``/healthz`` and ``/readyz``, also for a store that has closed."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.peer.http_client import Api
from tests.peer.lan_processes import LanTill, linked, wait_until
from tests.relay.processes import Relays
from tillsync.peer.http.ops import TillOps
from tillsync.peer.store import Till

STORE = "shop-ops"
SHIFT = "2f1d0c5e-8a7b-4c3d-9e2f-1a0b9c8d7e6f"


def scrape(api: Api) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of ``/metrics``: name -> {labels: value}."""
    with urllib.request.urlopen(api.base + "/metrics", timeout=30) as response:
        assert response.headers.get_content_type() == "text/plain"
        text = response.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return out


def one(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str) -> float:
    values = samples[name]
    assert len(values) == 1, values
    return next(iter(values.values()))


def get(api: Api, path: str) -> tuple[int, Any]:
    answer = api.with_token(None).call("GET", path)
    return answer.status, answer.body


def sale() -> dict[str, Any]:
    return {"lines": [{"product_id": "tea", "qty": 2, "unit_price": 150}],
            "payments": [{"method": "cash", "amount": 300}], "shift_client_id": SHIFT}


def test_metrics_follow_a_real_till_through_sales_an_outage_and_a_lan_peer(
        tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        till, other = LanTill(tmp_path / "till", "Till 1"), LanTill(tmp_path / "other",
                                                                     "Till 2")
        till.init(relay, STORE)
        other.init(relay, STORE)
        till.put_many([("products", "tea", {"name": "Tea", "sku": "T1", "price": 150}),
                       ("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})])
        till.record("shift_open", {"cashier_id": "ann", "opening_cash": 0}, SHIFT)
        till.sync()
        other.sync()
        started = time.time()
        with linked(till, other):
            api = Api.of(till.path)
            assert get(api, "/healthz") == (200, {"status": "ok"})
            assert get(api, "/readyz") == (200, {"status": "ready"})
            for _ in range(3):
                recorded = api.call("POST", "/api/entries", {"kind": "sale", "body": sale()})
                assert recorded.status == 201, recorded.body

            def synced() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
                samples = scrape(api)
                last = samples.get("tillsync_till_last_sync_timestamp_seconds")
                if one(samples, "tillsync_till_pending_entries") == 0 and last and \
                        next(iter(last.values())) >= started and \
                        one(samples, "tillsync_till_lan_peers") == 1:
                    return samples
                return None

            samples = wait_until(synced, "the sales to sync and the LAN peer to link")
            assert one(samples, "tillsync_till_relay_up") == 1
            # Three sales went through this daemon's store: at least one group commit,
            # and every entry the store wrote is counted once.
            assert one(samples, "tillsync_till_local_commit_duration_seconds_count") >= 1
            assert one(samples, "tillsync_till_local_commit_entries_total") >= 3
            behind = samples["tillsync_till_lan_peer_behind_entries"]
            assert list(behind) == [(("peer", "Till 2"),)]
            assert one(samples, "process_resident_memory_bytes") > 0

            relay.kill()
            recorded = api.call("POST", "/api/entries", {"kind": "sale", "body": sale()})
            assert recorded.status == 201

            def outage() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
                samples = scrape(api)
                return samples if one(samples, "tillsync_till_relay_up") == 0 else None

            samples = wait_until(outage, "the daemon to notice the relay is down")
            status = api.call("GET", "/api/sync").body
            assert one(samples, "tillsync_till_pending_entries") == status["pending"] == 1
            assert one(samples, "tillsync_till_last_sync_timestamp_seconds") < time.time()


def test_readyz_fails_once_the_store_is_closed(tmp_path: Path) -> None:
    async def main() -> None:
        await Till.init(tmp_path / "t", name="Till 1")
        till = await Till.open(tmp_path / "t")
        ops = TillOps(till, lambda: {"peers": [], "relay": {}}, lambda: None)
        request = cast(web.Request, None)  # the handlers read nothing of it
        ready = await ops.readyz(request)
        assert ready.status == 200
        await till.close()
        closed = await ops.readyz(request)
        assert closed.status == 503
        assert closed.text is not None and '"unavailable"' in closed.text
        assert (await ops.healthz(request)).status == 200

    asyncio.run(main())


def test_the_operator_paths_need_no_token_but_the_api_still_does(tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        till = LanTill(tmp_path / "till", "Till 1")
        till.init(relay, STORE)
        with linked(till):
            api = Api.of(till.path)
            for path in ("/healthz", "/readyz", "/metrics"):
                with urllib.request.urlopen(api.base + path, timeout=30) as response:
                    assert response.status == 200
            assert api.with_token(None).call("GET", "/api/sync").status == 401
