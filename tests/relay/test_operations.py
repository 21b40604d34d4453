"""The operator's view of a running relay, really started: ``/metrics`` scraped while
tills push their sales, its counters equal to the invoice register and the database
(one process, and ``--workers 2`` on PostgreSQL); ``/healthz`` and ``/readyz`` (the
database out of reach through a stopped proxy, then back).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.doubles import sale
from tests.peer.lan_processes import wait_until
from tests.relay.processes import (
    RelayProcess,
    Relays,
    TillDir,
    cli_json,
    query,
    stream_position,
)
from tests.relay.proxy import Proxy
from tests.relay.test_acceptance import _record_sales
from tests.relay.test_bad_input import selling
from tests.relay.test_logs import json_lines
from tests.relay.test_multi_process import finish, sync_procs, sync_until_done, via
from tillsync.peer.sync.engine import Ingested

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def relays(tmp_path: Path, relay_db: str | None) -> Iterator[Relays]:
    with Relays(tmp_path, relay_db) as started:
        yield started


def get(relay: RelayProcess, path: str) -> tuple[int, str]:
    """``GET path`` on the relay's port: status and body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{relay.port}{path}", timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(relay: RelayProcess) -> Samples:
    status, body = get(relay, "/metrics")
    assert status == 200, body
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


COUNTERS = ("tillsync_relay_entries_ingested_total", "tillsync_relay_invoices_issued_total",
            "tillsync_relay_group_commit_size_entries_count")


def register_count(relay: RelayProcess, store: str) -> int:
    register = cli_json("report", "invoices", "--store", store, "--data", str(relay.data),
                        *(("--db", relay.db) if relay.db else ()))
    assert isinstance(register["count"], int)
    return register["count"]


def assert_matches_database(relay: RelayProcess, samples: Samples,
                            stores: list[str]) -> None:
    """The counters equal what the relay's database and register hold."""
    entries = query(relay, "SELECT count(*) FROM entries")[0][0]
    assert value(samples, "tillsync_relay_entries_ingested_total") == entries
    assert value(samples, "tillsync_relay_invoices_issued_total") == \
        sum(register_count(relay, s) for s in stores)
    for store in stores:
        assert value(samples, "tillsync_relay_receipt_stream_position", store=store) == \
            stream_position(relay, store)
    # Every entry was in a committed batch once at least (a batch sent again counts twice).
    assert value(samples, "tillsync_relay_group_commit_size_entries_sum") >= entries
    assert value(samples, "tillsync_relay_group_commit_duration_seconds_count") == \
        value(samples, "tillsync_relay_group_commit_size_batches_count") > 0


def connected(relay: RelayProcess) -> float:
    return value(scrape(relay), "tillsync_relay_connected_devices")


async def _sell_while_scraping(relay: RelayProcess, tills: list[TillDir], rounds: int,
                               sales: int) -> list[Samples]:
    """Tills record sales and push them in ``rounds``; the relay is scraped as long as
    they push.  Every scrape, in order."""
    rng = random.Random(5)
    shifts: dict[str, str | None] = {t.name: None for t in tills}
    scrapes = []
    for _ in range(rounds):
        for till in tills:
            shifts[till.name], _ = await _record_sales(till.path, shifts[till.name], sales, rng)
        procs = sync_procs([(t, relay.url) for t in tills])
        while any(p.poll() is None for p in procs):
            scrapes.append(scrape(relay))
            time.sleep(0.05)  # leave the relay some of the machine's two cores
        assert all(code == 0 for code, _, _ in finish(procs))
    sync_until_done([(t, relay.url) for t in tills], "metrics")
    return scrapes


async def test_metrics_count_a_real_ingest_as_the_register_does(
        tmp_path: Path, relays: Relays) -> None:
    relay = relays.start()
    tills = [TillDir(tmp_path / f"t{i}", f"Till {i}") for i in range(2)]
    for till in tills:
        till.init(relay, "shop")
    scrapes = await _sell_while_scraping(relay, tills, 2, 40)
    assert scrapes, "no scrape while the tills pushed"
    for name in COUNTERS:  # counters only grow, scrape after scrape
        seen = [value(s, name) for s in scrapes]
        assert seen == sorted(seen), name

    # Another store: a sale, then a body the schema refuses, and a sale whose shift
    # has not arrived (it waits).
    store, chain, session = await selling(relay)
    try:
        chain.next("sale", {"lines": "not a list"})
        chain.next("sale", sale(("bread", 1, 320), shift_client_id=str(uuid.uuid4())))
        ingested = await session.push(chain.entries[2:])
        assert isinstance(ingested, Ingested)
        await session.receipts_until(4)
        samples = scrape(relay)
        assert value(samples, "tillsync_relay_connected_devices") == 1
    finally:
        await session.close()
    rejected = query(relay, "SELECT code, count(*) FROM rejected GROUP BY code")
    assert rejected == [("schema", 1)]
    assert value(samples, "tillsync_relay_entries_rejected_total", code="schema") == 1
    assert value(samples, "tillsync_relay_waiting_entries", store=store) == 1
    assert value(samples, "tillsync_relay_waiting_entries", store="shop") == 0
    assert_matches_database(relay, samples, ["shop", store])
    assert samples[("tillsync_relay_invoices_issued_total", ())] == \
        register_count(relay, "shop") + 1 > 80
    # The device's connection is gone once the relay has seen it close.
    wait_until(lambda: connected(relay) == 0, "the connected devices gauge to drop to 0")


@pytest.mark.postgres
@pytest.mark.slow
async def test_metrics_of_several_workers_add_up_whichever_answers(
        tmp_path: Path, pg_db: str) -> None:
    with Relays(tmp_path, pg_db) as relays:
        relay = relays.start("workers", extra=["--workers", "2", "--log-format", "json"])
        first = (relay.logs / "relay-1.out").read_text()
        found = re.search(r"worker processes: ([0-9, ]+);", first)
        assert found, first
        pids = [int(p) for p in found.group(1).split(", ")]
        tills = [TillDir(tmp_path / f"w{i}", f"Till W{i}") for i in range(3)]
        for till in tills:
            till.init(relay, "shop")
        await _sell_while_scraping(relay, tills, 1, 30)
        # Each scrape is a new connection: the kernel spreads them over both workers,
        # and each must answer the sum of both.
        for _ in range(6):
            assert_matches_database(relay, scrape(relay), ["shop"])
        # A worker killed: its counts stay in the sum, its connections leave it.
        os.kill(pids[0], signal.SIGKILL)
        assert relay.wait_log("starting another", timeout=30), relay.stderr()[-2000:]
        wait_until(lambda: connected(relay) == 0, "the connected devices gauge to drop to 0")
        for _ in range(6):
            samples = scrape(relay)
            assert_matches_database(relay, samples, ["shop"])
            assert value(samples, "tillsync_relay_connected_devices") == 0
        # The workers' log lines are JSON too, each with the process that wrote it.
        lines = json_lines(relay.stderr())
        assert all(isinstance(line.get("pid"), int) for line in lines), lines[:5]
        served = {line["pid"] for line in lines if line["message"].endswith(" connected")}
        assert served and served <= set(pids), (served, pids)


# -- health ------------------------------------------------------------------------------


def test_healthz_and_readyz_answer_without_a_token(relays: Relays) -> None:
    relay = relays.start()
    assert get(relay, "/healthz") == (200, '{"status": "ok"}\n')
    assert get(relay, "/readyz") == (200, '{"status": "ready"}\n')


@pytest.mark.postgres
def test_readyz_fails_while_the_database_is_out_of_reach_and_recovers(
        tmp_path: Path, pg_db: str) -> None:
    proxy = Proxy(urlsplit(pg_db).port or 5432)
    proxy.start()
    try:
        with Relays(tmp_path, via(pg_db, proxy.port)) as relays:
            relay = relays.start()
            assert get(relay, "/readyz")[0] == 200
            proxy.stop()
            status, body = get(relay, "/readyz")
            assert status == 503, body
            answer = json.loads(body)
            assert answer["status"] == "unavailable" and "database" in answer["reason"], answer
            assert get(relay, "/healthz")[0] == 200  # the process itself is alive
            scraped = scrape(relay)  # the process's own metrics still answer
            assert ("tillsync_relay_connected_devices", ()) in scraped
            proxy.start()
            wait_until(lambda: get(relay, "/readyz")[0] == 200, "/readyz to recover")
            assert relay.alive
    finally:
        proxy.close()


# -- database errors and retries, in-process -----------------------------------------------


class Flaky(Exception):
    pass


async def test_database_errors_and_retries_are_counted_per_attempt() -> None:
    from prometheus_client import REGISTRY

    from tillsync.relay.storage import with_retries

    class Storage:  # what with_retries asks of a RelayStorage
        @staticmethod
        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, Flaky)

    def counts() -> tuple[float, float]:
        return (REGISTRY.get_sample_value("tillsync_relay_database_errors_total",
                                          {"error": "Flaky"}) or 0.0,
                REGISTRY.get_sample_value("tillsync_relay_database_retries_total") or 0.0)

    failures = [Flaky("deadlock"), Flaky("lost connection")]

    async def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    before = counts()
    assert await with_retries(Storage(), "a test", attempt,  # type: ignore[arg-type]
                              first_pause=0.001) == "done"
    assert counts() == (before[0] + 2, before[1] + 2)
    failures.append(Flaky("again"))  # the last try fails: an error, and no retry
    with pytest.raises(Flaky):
        await with_retries(Storage(), "a test", attempt, tries=1)  # type: ignore[arg-type]
    assert counts() == (before[0] + 3, before[1] + 2)
