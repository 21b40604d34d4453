"""The relay's Prometheus metrics (``GET /metrics`` on the relay's port, ``relay.ops``).

Counted in the process that does the work, once per group commit (never once per
entry): entries ingested, rejected by code, invoices issued, the size and latency of
each group commit, database errors and retries, devices connected.  Read from the
database at each scrape, so that every relay process answers the same: each store's
receipt stream position and its entries waiting for a shift or a held sale.

With ``relay serve --workers N`` the N processes share one port and a scrape lands on
any of them, so the metrics use ``prometheus_client``'s multiprocess mode: the
supervising process empties ``DATA/metrics`` at start and gives each worker its path in
``PROMETHEUS_MULTIPROC_DIR`` (read when ``prometheus_client`` is imported); each worker
writes its values to its own files there and a scrape adds up every process's files.
The counters of a worker that died stay in the sum (a counter never goes back); its
connected devices leave it (``mark_process_dead``).  A single relay process keeps its
metrics in memory.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

if TYPE_CHECKING:
    from tillsync.relay.ingest import IngestResult

ENV = "PROMETHEUS_MULTIPROC_DIR"
FOLDER = "metrics"  # under the relay's data folder, with --workers
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# No *_created sample beside each counter: nothing reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

ENTRIES = Counter("tillsync_relay_entries_ingested_total",
                  "Entries new to a device's chain, stored by a group commit")
DUPLICATES = Counter("tillsync_relay_entries_duplicate_total",
                     "Entries received again and skipped: the relay held them already")
REJECTED = Counter("tillsync_relay_entries_rejected_total",
                   "Entries answered with a rejected receipt, by the receipt's code", ["code"])
INVOICES = Counter("tillsync_relay_invoices_issued_total",
                   "Invoice numbers given to sales")
COMMIT_BATCHES = Histogram("tillsync_relay_group_commit_size_batches",
                           "Batches (entries frames) decided in one group commit",
                           buckets=(1, 2, 4, 8, 16, 32))
COMMIT_ENTRIES = Histogram("tillsync_relay_group_commit_size_entries",
                           "Entries received in the batches of one group commit",
                           buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000))
COMMIT_SECONDS = Histogram("tillsync_relay_group_commit_duration_seconds",
                           "Time of one committed group commit transaction, from its start "
                           "to its commit", buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                     0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
CONNECTED = Gauge("tillsync_relay_connected_devices",
                  "Devices connected and authenticated now", multiprocess_mode="livesum")
DB_ERRORS = Counter("tillsync_relay_database_errors_total",
                    "Failed attempts of a database transaction, by exception class", ["error"])
DB_RETRIES = Counter("tillsync_relay_database_retries_total",
                     "Database transactions run again after a retryable failure")

# Read at each scrape: (store, stream position, entries waiting), one row per store.
STORES = """
SELECT h.store, h.seq,
       (SELECT count(DISTINCT w.client_id) FROM waiting w WHERE w.store = h.store)
FROM stream_heads h ORDER BY h.store
"""


def committed(results: Sequence[IngestResult], entries: int, started: float) -> None:
    """Count one group commit: its results, the entries its batches held, and its start
    (``time.perf_counter()``)."""
    COMMIT_SECONDS.observe(time.perf_counter() - started)
    COMMIT_BATCHES.observe(len(results))
    COMMIT_ENTRIES.observe(entries)
    stored = invoices = duplicates = 0
    for result in results:
        stored += result.stored
        invoices += result.invoices
        duplicates += result.duplicates
        for code, count in result.rejected.items():
            REJECTED.labels(code).inc(count)
    ENTRIES.inc(stored)
    INVOICES.inc(invoices)
    if duplicates:
        DUPLICATES.inc(duplicates)


def database_failed(exc: BaseException, retried: bool) -> None:
    """One failed attempt of a transaction; ``retried``: it is run again."""
    DB_ERRORS.labels(type(exc).__name__).inc()
    if retried:
        DB_RETRIES.inc()


def store_families(rows: Iterable[tuple[object, ...]]) -> list[Metric]:
    """The per-store gauges from ``STORES``'s rows."""
    position = GaugeMetricFamily("tillsync_relay_receipt_stream_position",
                                 "Receipts in the store's signed stream (its last "
                                 "server_seq)", labels=["store"])
    waiting = GaugeMetricFamily("tillsync_relay_waiting_entries",
                                "Entries waiting for their shift or held sale to arrive",
                                labels=["store"])
    for store, seq, count in rows:
        position.add_metric([str(store)], float(seq))  # type: ignore[arg-type]
        waiting.add_metric([str(store)], float(count))  # type: ignore[arg-type]
    return [position, waiting]


class _Fixed:
    """A collector of metric families made beforehand."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def exposition(extra: list[Metric]) -> bytes:
    """Every metric in Prometheus' text format: this process's (or, in multiprocess
    mode, every relay process's), and ``extra``."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(ENV):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(_Fixed(extra))
    else:
        registry.register(_Fixed([*REGISTRY.collect(), *extra]))
    return generate_latest(registry)


def fresh_folder(data: Path) -> Path:
    """``DATA/metrics`` emptied: what the workers of a new ``relay serve --workers``
    write their metrics to (the files of an earlier run would be added up too)."""
    folder = data / FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o700)
    return folder


def process_dead(folder: Path, pid: int) -> None:
    """A worker is gone: its live gauges (connected devices) leave the sum."""
    mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
