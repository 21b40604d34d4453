"""``--log-format json`` of ``relay serve`` and ``peer run``, really started: every line
parses, and names the store, device and connection it is about."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peer.lan_processes import LanTill, wait_until
from tests.relay.processes import Relays, TillDir
from tillsync.peer import logfmt


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[Relays]:
    """SQLite: the log lines are the same on either backend."""
    with Relays(tmp_path) as started:
        yield started


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a log, each parsed as one JSON object with the four fields."""
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line
    return lines


def test_relay_json_logs_name_the_store_device_and_connection(
        tmp_path: Path, relays: Relays) -> None:
    relay = relays.start(extra=["--log-format", "json"])
    till = TillDir(tmp_path / "till", "Till J")
    info = till.init(relay, "shop-json")
    till.sync_json()
    lines = json_lines(relay.stderr())
    about = [line for line in lines if line["message"].endswith(" connected")]
    assert about, lines
    assert about[0]["store"] == "shop-json" and about[0]["device"] == info["device_id"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", about[0]["connection"]), about[0]
    enrolled = [line for line in lines if line["message"].startswith("enrolled ")]
    assert enrolled and enrolled[0]["store"] == "shop-json", lines


def test_peer_run_json_logs_name_its_store_and_device(tmp_path: Path,
                                                      relays: Relays) -> None:
    relay = relays.start()
    till = LanTill(tmp_path / "till", "Till L")
    info = till.init(relay, "shop-lan")
    till.start([], extra=["--log-format", "json"])
    try:
        wait_until(lambda: "listening for LAN peers" in till.log(), "the daemon's first line")
    finally:
        till.stop()
    lines = json_lines(till.log())
    assert lines
    for line in lines:
        assert line["store"] == "shop-lan" and line["device"] == info["device_id"], line


def test_json_formatter_takes_extra_fields_and_exceptions() -> None:
    """In-process: ``extra=`` beats the context, a traceback is one field."""
    record = logging.LogRecord("tillsync.relay", logging.ERROR, __file__, 1, "failed %d",
                               (3,), None)
    record.__dict__["store"] = "s1"
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()

    def formatted() -> dict[str, Any]:
        logfmt.bind(store="other", device="d1", connection=None)
        line: dict[str, Any] = json.loads(logfmt.JsonFormatter().format(record))
        return line

    line = contextvars.copy_context().run(formatted)  # the bindings stay in that copy
    assert line["message"] == "failed 3" and line["level"] == "error"
    assert (line["store"], line["device"]) == ("s1", "d1") and "connection" not in line
    assert "ValueError: boom" in line["exception"]
