"""A real relay process against connections that do not log in, or log in and then say
nothing: the handshake timeout, the idle timeout and the cap on connections logging in
at once close them with the documented close codes (``relay/limits.py``).  The
timeouts are set short through ``relay serve``'s flags; every wait has a generous
bound, and what is asserted is the close code, not a time."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import cbor2
import msgpack
from websockets.asyncio.client import connect

from tests.relay.processes import (
    RawSession,
    RelayProcess,
    Relays,
    TillDir,
    cli_json,
    closed_with,
    hello,
    in_thread,
)
from tillsync.peer.sync.deadlines import CLOSE_BUSY, CLOSE_HANDSHAKE_TIMEOUT, CLOSE_IDLE

STORE = "shop-limits"


def with_till(relays: Relays, tmp_path: Path, *extra: str
              ) -> tuple[RelayProcess, TillDir, str]:
    """A relay started with ``extra`` flags, a till enrolled there, and its device id."""
    relay = relays.start(extra=extra)
    till = TillDir(tmp_path / "till", "Till 1")
    return relay, till, till.init(relay, STORE)["device_id"]


def test_a_connection_that_never_logs_in_is_closed(tmp_path: Path) -> None:
    """Silent from the start, or nothing but a non-fatal error frame: each is closed with
    the handshake close code."""
    with Relays(tmp_path) as relays:
        relay = relays.start(extra=["--handshake-timeout", "0.5"])

        async def attempt(frames: list[bytes]) -> tuple[int | None, str]:
            async with connect(relay.url, compression=None) as ws:
                for frame in frames:
                    await ws.send(frame)
                return await closed_with(ws)

        error = msgpack.packb({"t": "error", "code": "bad_field", "message": "",
                               "fatal": False}, use_bin_type=True)

        async def run() -> list[tuple[int | None, str]]:
            return list(await asyncio.gather(attempt([]), attempt([error])))

        silent, only_error = in_thread(run)
        assert silent == (CLOSE_HANDSHAKE_TIMEOUT, "handshake not completed within 0.5 s")
        assert only_error[0] == CLOSE_HANDSHAKE_TIMEOUT
        assert "no handshake within 0.5 s" in relay.stderr()


def test_a_hello_of_an_enrolled_device_without_auth_is_closed(tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay, _, device = with_till(relays, tmp_path, "--handshake-timeout", "0.5")

        async def run() -> tuple[int | None, str]:
            async with connect(relay.url, compression=None) as ws:
                await ws.send(hello(STORE, device))
                return await closed_with(ws)  # the challenge comes, then the close

        assert in_thread(run)[0] == CLOSE_HANDSHAKE_TIMEOUT


def test_too_many_connections_logging_in_are_refused_at_once(tmp_path: Path) -> None:
    """Two connections may be logging in; a third is closed at once with 1013; once one
    of the two has gone, a new one is served again."""
    with Relays(tmp_path) as relays:
        relay = relays.start(extra=["--max-handshakes", "2", "--handshake-timeout", "60"])

        async def run() -> tuple[tuple[int | None, str], dict[str, object]]:
            first = await connect(relay.url, compression=None)
            second = await connect(relay.url, compression=None)
            try:
                third = await connect(relay.url, compression=None)
                refused = await closed_with(third)
                # The first ends its handshake: an unknown device is refused and closed.
                await first.send(hello(STORE, str(uuid.uuid4())))
                await closed_with(first)
                fourth = await connect(relay.url, compression=None)
                await fourth.send(hello(STORE, str(uuid.uuid4())))
                async with asyncio.timeout(30):
                    answer = msgpack.unpackb(await fourth.recv(), raw=False)
                await fourth.close()
                return refused, answer
            finally:
                await second.close()

        refused, answer = in_thread(run)
        assert refused == (CLOSE_BUSY, "too many connections logging in; try again later")
        assert answer["t"] == "error" and answer["code"] == "unknown_device"
        assert "2 connections in the handshake already" in relay.stderr()


def test_a_logged_in_link_with_no_frame_is_closed(tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay, till, device = with_till(relays, tmp_path, "--idle-timeout", "0.5")

        async def run() -> tuple[int | None, str]:
            session = await RawSession.open(relay.url, STORE, device, till.key)
            return await closed_with(session.ws)

        assert in_thread(run) == (CLOSE_IDLE, "idle: no frame for 0.5 s")


def test_automerge_repo_clients_are_under_the_same_limits(tmp_path: Path) -> None:
    """``/automerge`` counts as a handshake until the client's ``join``: one connection
    may be in it (a second is refused with 1013), a silent one is closed with the
    handshake code, and a joined client that goes quiet with the idle code."""
    with Relays(tmp_path) as relays:
        relay, _, _ = with_till(relays, tmp_path, "--max-handshakes", "1",
                                "--handshake-timeout", "0.5", "--idle-timeout", "0.5")
        token = cli_json("relay", "token", "--data", str(relay.data), "--store", STORE)["token"]
        url = f"{relay.url}/automerge?token={token}"
        join = cbor2.dumps({"type": "join", "senderId": "node-1", "peerMetadata": {},
                            "supportedProtocolVersions": ["1"]})

        async def run() -> tuple[tuple[int | None, str], ...]:
            silent = await connect(url, compression=None)
            busy = await connect(url, compression=None)
            refused = await closed_with(busy)
            timed_out = await closed_with(silent)
            async with connect(url, compression=None) as joined:
                await joined.send(join)
                async with asyncio.timeout(30):
                    answer = cbor2.loads(await joined.recv())
                assert answer["type"] == "peer" and answer["targetId"] == "node-1"
                idle = await closed_with(joined)
            return refused, timed_out, idle

        refused, timed_out, idle = in_thread(run)
        assert refused == (CLOSE_BUSY, "too many connections logging in; try again later")
        assert timed_out == (CLOSE_HANDSHAKE_TIMEOUT, "handshake not completed within 0.5 s")
        assert idle == (CLOSE_IDLE, "idle: no frame for 0.5 s")
