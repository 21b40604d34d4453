"""What an operator's tools ask a till daemon, on its API port, without a token.

    GET /healthz   200 {"status": "ok"} while the daemon answers (liveness)
    GET /readyz    200 {"status": "ready"} when the store is open and its database
                   answers within READY_TIMEOUT seconds, else 503 {"status":
                   "unavailable", "reason": ...}
    GET /metrics   Prometheus' text format, through ``prometheus_client``

The metrics, each read when scraped except the commit latency, which is counted as
commits happen:

- ``tillsync_till_pending_entries``: entries the relay has not acknowledged yet;
- ``tillsync_till_last_sync_timestamp_seconds``: when the last successful sync round
  with the relay ended (absent until one has);
- ``tillsync_till_relay_up``: 1 if the last round with the relay succeeded, 0 if not;
- ``tillsync_till_lan_peers``: LAN peers linked now;
- ``tillsync_till_lan_peer_behind_entries`` / ``..._behind_receipts``, by peer name: how
  far each linked peer is behind this till;
- ``tillsync_till_rejected_entries`` / ``tillsync_till_waiting_entries``: entries the
  relay rejected, or holds waiting;
- ``tillsync_till_local_commit_duration_seconds``: one group commit of the store
  (a histogram), with its entries in ``tillsync_till_local_commit_entries_total``;
- the process's own (CPU, memory, open files) from ``prometheus_client``.

Like ``/openapi.json`` and the page, these paths need no token: they are served where
the API is, which is loopback unless the owner opens it (``peer run --api-host``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from tillsync.peer.store import Till

log = logging.getLogger("tillsync.http")

PATHS = ("/healthz", "/readyz", "/metrics")
READY_TIMEOUT = 2.0  # seconds
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class _Scraped:
    """A collector of metric families gathered just before the scrape."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> list[Metric]:
        return self.families


class TillOps:
    """One daemon's health answers and metrics (a registry of its own, so that several
    daemons in one process, as tests run them, never mix their figures)."""

    def __init__(self, till: Till, daemon_status: Callable[[], dict[str, Any]],
                 last_sync: Callable[[], float | None]) -> None:
        self.till = till
        self.daemon_status = daemon_status
        self.last_sync = last_sync
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.commit_seconds = Histogram(
            "tillsync_till_local_commit_duration_seconds",
            "Time of one group commit of the till's store (one SQLite transaction)",
            buckets=COMMIT_BUCKETS, registry=self.registry)
        self.commit_entries = Counter(
            "tillsync_till_local_commit_entries",
            "Entries written by the till's group commits", registry=self.registry)
        self._scraped = _Scraped()
        self.registry.register(self._scraped)
        till.on_commit = self.committed

    def committed(self, seconds: float, entries: int) -> None:
        self.commit_seconds.observe(seconds)
        if entries:
            self.commit_entries.inc(entries)

    async def _families(self) -> list[Metric]:
        till = self.till
        pending, _ = await till.pending(limit=0)
        status = await till.status()
        daemon = self.daemon_status()
        out: list[Metric] = [
            GaugeMetricFamily("tillsync_till_pending_entries",
                              "Entries the relay has not acknowledged yet", value=pending),
            GaugeMetricFamily("tillsync_till_rejected_entries",
                              "Entries the relay rejected (kept, with the rejection)",
                              value=len(status["rejected"])),
            GaugeMetricFamily("tillsync_till_waiting_entries",
                              "Entries the relay holds waiting for their shift or held "
                              "sale", value=status["waiting"]),
        ]
        relay = daemon.get("relay") or {}
        if relay:
            out.append(GaugeMetricFamily(
                "tillsync_till_relay_up", "1 if the last sync round with the relay "
                "succeeded, else 0", value=1.0 if relay.get("ok") else 0.0))
        last = self.last_sync()
        if last is not None:
            out.append(GaugeMetricFamily(
                "tillsync_till_last_sync_timestamp_seconds",
                "Unix time at which the last successful sync round with the relay ended",
                value=last))
        peers = [p for p in daemon.get("peers") or [] if p.get("connected")]
        out.append(GaugeMetricFamily("tillsync_till_lan_peers", "LAN peers linked now",
                                     value=len(peers)))
        behind = GaugeMetricFamily("tillsync_till_lan_peer_behind_entries",
                                   "Entries this till holds that a linked LAN peer lacks",
                                   labels=["peer"])
        receipts = GaugeMetricFamily("tillsync_till_lan_peer_behind_receipts",
                                     "Relay receipts this till holds that a linked LAN "
                                     "peer lacks", labels=["peer"])
        for peer in peers:
            name = str(peer.get("name") or peer.get("device_id") or "?")
            behind.add_metric([name], float(peer.get("behind_entries") or 0))
            receipts.add_metric([name], float(peer.get("behind_receipts") or 0))
        return [*out, behind, receipts]

    async def metrics(self, request: web.Request) -> web.Response:
        self._scraped.families = await self._families()
        try:
            body = generate_latest(self.registry)
        finally:
            self._scraped.families = []
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(self.till.pending(limit=0), READY_TIMEOUT)
        except TimeoutError:
            reason = f"the store's database did not answer within {READY_TIMEOUT:g} s"
        except Exception as exc:  # whatever it is, the answer is "not ready", with why
            reason = f"the store cannot be read: {type(exc).__name__}: {exc}"[:500]
        else:
            if not self.till.closing:
                return _json(200, {"status": "ready"})
            reason = "the store is closing"
        log.warning("readyz: %s", reason)
        return _json(503, {"status": "unavailable", "reason": reason})

    def add_routes(self, app: web.Application) -> None:
        handlers: dict[str, Callable[[web.Request], Awaitable[web.Response]]] = {
            "/healthz": self.healthz, "/readyz": self.readyz, "/metrics": self.metrics}
        for path in PATHS:
            app.router.add_get(path, handlers[path])


def _json(status: int, data: dict[str, str]) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, sort_keys=True) + "\n",
                        content_type="application/json")
