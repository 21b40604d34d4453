"""After an outage a till tries the relay again within seconds, not a minute: the wait
between attempts is capped (``RELAY_MAX_BACKOFF``) and keeps its jitter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.relay.processes import refused_url
from tillsync.peer import client
from tillsync.peer.lan.node import NodeConfig
from tillsync.peer.store import Till


@given(failures=st.integers(0, 10_000), interval=st.floats(0.01, 3600))
def test_the_wait_is_capped_and_jittered(failures: int, interval: float) -> None:
    delay = client.retry_delay(failures, interval)
    assert 0 <= delay <= client.RELAY_MAX_BACKOFF <= 10


def test_the_daemons_default_to_the_cap() -> None:
    assert NodeConfig(Path(".")).max_backoff <= 10


async def test_a_till_retries_within_the_cap_after_many_failures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``peer run --no-lan``'s loop against a relay that stays down: even the longest
    wait the jitter can draw (patched to its upper bound) stays within the cap."""
    await Till.init(tmp_path / "till", name="Till 1")
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float, *args: Any) -> None:
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(client.random, "uniform", lambda low, high: high)
    monkeypatch.setattr(client.asyncio, "sleep", sleep)
    await client.run(tmp_path / "till", url=refused_url(), interval=5.0, rounds=8)
    assert len(waits) == 7
    assert max(waits) <= 10
