"""What an operator's tools ask the relay, on its port, without a token.

    GET /healthz   200 {"status": "ok"} while the process answers (liveness)
    GET /readyz    200 {"status": "ready"} when the database answers a trivial query
                   within READY_TIMEOUT seconds, else 503 {"status": "unavailable",
                   "reason": ...} (readiness: send it no devices meanwhile)
    GET /metrics   Prometheus' text format (``relay.metrics``)

None of them reads a store's data beyond the per-store counts in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging

from tillsync.relay import metrics
from tillsync.relay.storage import RelayStorage

log = logging.getLogger("tillsync.relay")

PATHS = ("/healthz", "/readyz", "/metrics")
JSON = "application/json; charset=utf-8"
READY_TIMEOUT = 2.0  # seconds
STORES_TIMEOUT = 5.0  # seconds for the per-store gauges of a scrape

Answer = tuple[http.HTTPStatus, str, str]  # status, content type, body


def _json(status: http.HTTPStatus, data: dict[str, str]) -> Answer:
    return status, JSON, json.dumps(data, sort_keys=True) + "\n"


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"the database did not answer within {timeout:g} s"
    return f"the database cannot be used: {type(exc).__name__}: {exc}"[:500]


async def answer(path: str, storage: RelayStorage) -> Answer:
    """The answer to ``GET path``, ``path`` one of ``PATHS``."""
    if path == "/healthz":
        return _json(http.HTTPStatus.OK, {"status": "ok"})
    if path == "/readyz":
        try:
            await asyncio.wait_for(storage.read("SELECT 1"), READY_TIMEOUT)
        except Exception as exc:  # whatever it is, the answer is "not ready", with why
            return _json(http.HTTPStatus.SERVICE_UNAVAILABLE,
                         {"status": "unavailable", "reason": _why(exc, READY_TIMEOUT)})
        return _json(http.HTTPStatus.OK, {"status": "ready"})
    try:
        rows = await asyncio.wait_for(storage.read(metrics.STORES), STORES_TIMEOUT)
    except Exception as exc:  # the process's own metrics are still worth answering
        log.warning("metrics: per-store gauges left out: %s", _why(exc, STORES_TIMEOUT))
        rows = []
    body = metrics.exposition(metrics.store_families(rows))
    return http.HTTPStatus.OK, metrics.CONTENT_TYPE, body.decode()
