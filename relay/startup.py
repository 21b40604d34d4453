"""What ``relay serve`` checks before it creates or opens anything.

- The port is free: a relay that cannot listen leaves no data folder and no database
  behind (``check_port``).
- The data folder can be written: a relay on a read-only or full disk would listen and
  then fail every sync, so it does not start (``check_writable``).
- No other relay process serves the same SQLite database: SQLite serves one relay
  process (several processes share a PostgreSQL database instead), so ``DataLock`` takes
  an exclusive ``flock`` on ``DIR/relay.lock`` for the process's lifetime.  The kernel
  drops it when the process ends, however it ends (kill -9 included), so a restart is
  never refused by a lock left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import IO

LOCK_FILE = "relay.lock"


class StartRefused(Exception):
    """The relay cannot start as asked; the message says why and what to do."""

    def __init__(self, message: str, *, busy: bool = False) -> None:
        super().__init__(message)
        self.busy = busy  # another process holds what this one needs


def check_port(host: str, port: int) -> None:
    """Raise ``StartRefused`` if ``host:port`` cannot be listened on (in use, or an
    address this machine does not have).  Port 0 (any free port) always can."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartRefused(f"cannot listen on {host}:{port}: {exc.strerror}; check --host") \
            from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            # As the server will: SO_REUSEADDR, so a port left in TIME_WAIT by a relay
            # that just stopped is not mistaken for a busy one.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise StartRefused(f"port {port} on {host} is already in use (another "
                                       "relay?); stop that process or pick another --port") \
                        from None
                raise StartRefused(f"cannot listen on {host}:{port}: {exc.strerror}; check "
                                   "--host and --port") from None


def check_writable(data: Path) -> None:
    """Make ``data`` if missing and prove it can be written (a file written, synced and
    removed); raise ``StartRefused`` naming the cause if not."""
    probe = data / f".write-check-{os.getpid()}"
    try:
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"tillsync\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
        for name in ("relay.db", "relay.db-wal", "relay.db-shm", "relay.key"):
            existing = data / name
            if existing.exists() and not os.access(existing, os.W_OK):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(existing))
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink()
        cause = {errno.EROFS: "it is on a read-only file system",
                 errno.ENOSPC: "the disk is full",
                 errno.EDQUOT: "the disk quota is used up",
                 errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied"}.get(exc.errno or 0, exc.strerror)
        where = exc.filename if exc.filename and exc.filename != str(probe) else data
        raise StartRefused(f"the relay's data folder cannot be written ({where}: {cause}); "
                           "make it writable or free space, or pick another --data") from None


class DataLock:
    """An exclusive lock on the SQLite data folder, held while this object is open."""

    def __init__(self, data: Path) -> None:
        path = data / LOCK_FILE
        handle: IO[str] = open(path, "a+")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StartRefused(f"{data} is already served by a relay ({holder}); stop it "
                               "first, or use --db postgresql://... to run several relay "
                               "processes on one database", busy=True) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}\n")
        handle.flush()
        self._handle: IO[str] | None = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
