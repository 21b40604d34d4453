"""Helpers for LAN tests: tills whose ``peer run`` daemons are real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.doubles import REPO
from tests.relay.processes import RelayProcess, Relays, TillDir, run_cli
from tillsync.tools.ports import free_port

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def wait_until(check: Callable[[], object], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class LanTill(TillDir):
    """A till directory plus its daemon (``peer run``) as a separate process."""

    port: int = field(default_factory=free_port)
    daemon: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self, peers: list[LanTill], *, relay: bool = True, mdns: bool = False,
              lan: bool = True, extra: Sequence[str] = ()) -> None:
        """Start ``peer run`` listening on loopback, linked to ``peers`` (``extra``: more
        arguments; ``lan=False``: ``--no-lan``); returns once its HTTP API and LAN port
        answer."""
        assert self.daemon is None or self.daemon.poll() is not None
        self.runs += 1
        args = [sys.executable, "-m", "tillsync.tools.cli", "peer", "run", str(self.path),
                "--lan-host", "127.0.0.1", "--lan-port", str(self.port), "--interval", "0.5",
                "--api-port", "0"]
        if not mdns:
            args.append("--no-mdns")
        for peer in peers:
            args += ["--peer", peer.url]
        if not relay:
            args.append("--no-relay")
        if not lan:
            args.append("--no-lan")
        args += extra
        log = open(self.path.parent / f"{self.path.name}.run{self.runs}.log", "wb")  # noqa: SIM115
        self.daemon = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=ENV,
                                       start_new_session=True)
        log.close()
        wait_until(lambda: (self.path / "api.json").exists()
                   and (self._listening() or not lan), f"{self.name}'s daemon to start")

    def _listening(self) -> bool:
        assert self.daemon is not None
        if self.daemon.poll() is not None:
            raise AssertionError(f"{self.name}'s daemon exited with {self.daemon.returncode}:"
                                 f"\n{self.log()[-3000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        path = self.path.parent / f"{self.path.name}.run{self.runs}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGINT)
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()

    def kill(self) -> None:
        """kill -9: no chance to tidy up."""
        if self.daemon is not None and self.daemon.poll() is None:
            os.killpg(self.daemon.pid, signal.SIGKILL)
            self.daemon.wait()

    def get(self, collection: str, record_id: str) -> dict[str, Any] | None:
        result = run_cli("peer", "get", str(self.path), collection, record_id, check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def entry_counts(self) -> dict[str, int]:
        counts: dict[str, int] = self.status()["entries"]
        return counts

    def lan(self) -> dict[str, Any]:
        lan: dict[str, Any] = self.status()["lan"] or {"peers": []}
        return lan


@contextmanager
def linked(*tills: LanTill) -> Iterator[None]:
    """Run the tills' daemons, each linked to all the others; stop them all on exit."""
    try:
        for till in tills:
            till.start([other for other in tills if other is not till])
        yield
    finally:
        for till in tills:
            till.stop()


@contextmanager
def office_and_till(root: Path, store: str, master: Sequence[tuple[str, str, dict[str, Any]]]
                    ) -> Iterator[tuple[RelayProcess, LanTill, LanTill]]:
    """A relay, an admin till ("Office", holding ``master``) and a till-role till
    ("Till 2"), both synced once, their daemons linked on the LAN."""
    with Relays(root, None) as relays:
        relay = relays.start()
        office, till = LanTill(root / "office", "Office"), LanTill(root / "till", "Till 2")
        office.init(relay, store)
        till.init(relay, store, role="till")
        office.put_many(master)
        yield relay, office, till


def assert_no_traceback(tills: Sequence[LanTill]) -> None:
    """No daemon logged a traceback before it was told to stop."""
    for till in tills:
        log = till.log()
        assert "Traceback" not in log.split("KeyboardInterrupt")[0], log[-3000:]
