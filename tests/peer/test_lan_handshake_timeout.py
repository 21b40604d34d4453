"""A real ``peer run`` daemon closes a LAN connection that does not complete the
handshake within ``--lan-handshake-timeout``, with the protocol's close code; a good
till links as before.  The relay is only needed to enroll the tills."""

from __future__ import annotations

from pathlib import Path

from websockets.asyncio.client import connect

from tests.peer.lan_processes import LanTill, wait_until
from tests.relay.processes import Relays, closed_with, in_thread
from tillsync.peer.sync.deadlines import CLOSE_HANDSHAKE_TIMEOUT

STORE = "shop-lan-deadline"


def test_a_lan_connection_that_never_logs_in_is_closed(tmp_path: Path) -> None:
    with Relays(tmp_path) as relays:
        relay = relays.start()
        one, two = LanTill(tmp_path / "one", "Till 1"), LanTill(tmp_path / "two", "Till 2")
        one.init(relay, STORE)
        two.init(relay, STORE)
        relay.kill()
        try:
            one.start([], relay=False, extra=["--lan-handshake-timeout", "0.5"])

            async def silent() -> tuple[int | None, str]:
                async with connect(one.url, compression=None) as ws:
                    return await closed_with(ws)

            assert in_thread(silent) == (CLOSE_HANDSHAKE_TIMEOUT,
                                         "handshake not completed within 0.5 s")
            assert "no handshake within 0.5 s" in one.log()
            # A till that does log in keeps its link.
            two.start([one], relay=False)
            wait_until(lambda: [p["connected"] for p in one.lan()["peers"]] == [True],
                       "Till 2 to link with Till 1")
        finally:
            one.stop()
            two.stop()
