"""``tillsync relay serve --workers N``: N relay processes on one port and one database.

The parent migrates the schema once, then starts N ``relay serve`` processes that all
listen on the same port with ``SO_REUSEPORT``: the kernel spreads new connections over
them, no proxy in between.  They share nothing but the PostgreSQL database (numbering
under its row locks, receipts and document changes announced by ``NOTIFY``), so a worker
that dies takes only its own connections with it: its devices reconnect and land on
another one, and the parent starts a new worker in its place.  The workers exit when
the parent does, even after a kill -9 of the parent.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from tillsync.peer.shutdown import SHUTDOWN_GRACE, force_exit
from tillsync.relay import metrics

log = logging.getLogger("tillsync.relay")

START_TIMEOUT = 60.0
RESTART_PAUSE_MAX = 10.0


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) with SO_REUSEPORT to ``host:port``: holds the port
    (one picked by the kernel if 0) while the workers bind it too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class Worker:
    def __init__(self, number: int, argv: list[str], env: dict[str, str] | None = None
                 ) -> None:
        self.number = number
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = threading.Event()
        self.started_at = 0.0
        self.restarts = 0

    def start(self) -> None:
        self.ready.clear()
        self.started_at = time.monotonic()
        # A process group of its own: a Ctrl-C at the terminal reaches the parent alone,
        # which passes the stop on once (a second signal would make the worker exit at
        # once instead of gracefully).
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     env=self.env, process_group=0)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True,
                         name=f"worker-{self.number}-out").start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        """Note when the worker listens; pass everything else it prints through."""
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(b"relay listening on "):
                self.ready.set()
            else:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()


def serve_workers(*, workers: int, data: Path, db: str, host: str, port: int,
                  db_wait: float, extra: Sequence[str] = (), scheme: str = "ws",
                  grace: float = SHUTDOWN_GRACE) -> int:
    """Run ``workers`` relay processes until SIGINT/SIGTERM; restart any that dies.
    ``extra``: more ``relay serve`` arguments for each (TLS, certificate validity).
    A signal is passed on to the workers as SIGTERM: each stops gracefully within
    ``grace`` seconds (``peer/shutdown.py``); one still there a second later is killed.
    A second signal kills them and exits at once."""
    reserved = reserve_port(host, port)
    port = reserved.getsockname()[1]
    base = [sys.executable, "-m", "tillsync.tools.cli", "relay", "serve", "--data", str(data),
            "--db", db, "--host", host, "--port", str(port), "--reuse-port",
            "--db-wait", str(db_wait), "--worker-of", str(os.getpid()),
            "--shutdown-grace", str(grace), *extra]
    # Every worker writes its metrics to files in one folder; a scrape on any of them
    # adds up all of them (relay/metrics.py).
    folder = metrics.fresh_folder(data)
    env = {**os.environ, metrics.ENV: str(folder)}
    pool = [Worker(i + 1, base, env) for i in range(workers)]
    stopping = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stopping.is_set():
            log.warning("shutdown: second signal (%s): killing the relay workers, exiting now",
                        name)
            for worker in pool:
                if worker.proc is not None and worker.proc.poll() is None:
                    worker.proc.kill()
            force_exit(128 + signum)
        log.info("shutdown: %s received: stopping %d relay workers within %.1f s (a second "
                 "signal exits at once)", name, len(pool), grace)
        stopping.set()

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for worker in pool:
            worker.start()
        deadline = time.monotonic() + START_TIMEOUT + db_wait
        for worker in pool:
            while not worker.ready.wait(0.1):
                assert worker.proc is not None
                if stopping.is_set():
                    return 130
                if worker.proc.poll() is not None or time.monotonic() > deadline:
                    log.error("relay worker %d did not start (exit %s)", worker.number,
                              worker.proc.poll())
                    return 3
        pids = ", ".join(str(w.proc.pid) for w in pool if w.proc is not None)
        print(f"relay listening on {scheme}://{host}:{port} ({workers} worker processes: {pids}; "
              f"database {_describe(db)})", flush=True)
        while not stopping.wait(0.2):
            for worker in pool:
                assert worker.proc is not None
                code = worker.proc.poll()
                if code is None:
                    continue
                # Crash-looping (e.g. the database is gone): wait longer each time.
                quick = time.monotonic() - worker.started_at < 5.0
                worker.restarts = worker.restarts + 1 if quick else 0
                pause = min(RESTART_PAUSE_MAX, 0.5 * 2 ** worker.restarts) if quick else 0.0
                log.warning("relay worker %d (pid %d) exited with %s; starting another%s",
                            worker.number, worker.proc.pid, code,
                            f" in {pause:.1f} s" if pause else "")
                metrics.process_dead(folder, worker.proc.pid)
                if stopping.wait(pause):
                    break
                worker.start()
        return 0
    finally:
        for worker in pool:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.terminate()
        deadline = time.monotonic() + grace + 1.0
        for worker in pool:
            if worker.proc is not None:
                try:
                    worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("shutdown: relay worker %d (pid %d) still running: killed",
                                worker.number, worker.proc.pid)
                    worker.proc.kill()
                    worker.proc.wait()
        if stopping.is_set():
            log.info("shutdown: the relay workers stopped")
        for signum, handler in old.items():
            signal.signal(signum, handler)
        reserved.close()


def _describe(db: str) -> str:
    from tillsync.relay.storage.postgres import describe

    return describe(db)
