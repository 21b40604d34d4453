"""The benchmark's child processes (the relay, the baseline) and the CPU they use, read
from /proc."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path

START_TIMEOUT = 60.0
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LISTENING = re.compile(rb"listening on (?:ws|http)://([0-9.]+):([0-9]+)")

async def ended(proc: asyncio.subprocess.Process, within: float) -> None:
    """Wait up to ``within`` seconds for ``proc`` to exit (after it was asked to), then
    kill it."""
    try:
        async with asyncio.timeout(within):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()


class Server:
    """A child process that prints ``... listening on SCHEME://HOST:PORT`` when ready."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, argv: Sequence[str], log: Path) -> Server:
        env = dict(os.environ)
        root = PROJECT_ROOT
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with open(log, "ab") as err:  # noqa: ASYNC230 - opened once, handed to the child
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=err, env=env)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"{argv[2]} exited before listening; see {log}")
                    found = LISTENING.search(line)
                    if found:
                        break
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        server = cls(proc, int(found.group(2)), log)
        server._drain = asyncio.create_task(server._discard(proc.stdout))
        return server

    @staticmethod
    async def _discard(stream: asyncio.StreamReader) -> None:
        while await stream.read(65536):
            pass

    def cpu(self) -> dict[str, float]:
        """CPU of the relay: its process, or with ``--workers`` every worker process
        (each one's event loop counted as "main"), and their prepare worker processes
        (hashes, bodies and schema checks of large batches: "prepare")."""
        total = process_cpu(self.proc.pid)
        total["prepare"] = 0.0
        relays = [self.proc.pid, *children(self.proc.pid, "tools.cli")]
        for pid in relays[1:]:
            for key, value in process_cpu(pid).items():
                total[key] += value
        for pid in relays:
            for worker in children(pid, "multiprocessing.spawn"):
                total["prepare"] += sum(process_cpu(worker).values())
        return total

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            await ended(self.proc, 30)
        if self._drain is not None:
            await self._drain
        return self.proc.returncode or 0


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process: its main thread (the event loop) and all other threads."""
    out = {"main": 0.0, "threads": 0.0}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
        out["main" if tid == str(pid) else "threads"] += seconds
    return out


def children(pid: int, command: str) -> list[int]:
    """The direct children of a process whose command line has ``command`` in it (the
    relay's worker processes, their prepare workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    fields = handle.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid and command in _cmdline(int(entry)):
                found.append(int(entry))
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL server process on this machine so far."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    head, _, rest = handle.read().rpartition(")")
            except OSError:
                continue
            if head.endswith("(postgres"):
                fields = rest.split()
                total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def cpu_delta(after: dict[str, float], before: dict[str, float], wall: float
              ) -> dict[str, float]:
    out = {}
    for part in ("main", "threads", "prepare"):
        if part in after:
            spent = after[part] - before[part]
            out[f"{part}_s"] = round(spent, 2)
            out[f"{part}_pct"] = round(100 * spent / wall, 1) if wall else 0.0
    return out


def us_per_sale(cpu: dict[str, float], sales: int) -> float:
    """CPU microseconds per sale of a process and its workers, from ``cpu_delta``'s
    seconds (event loop, other threads, prepare worker processes)."""
    spent = sum(cpu.get(f"{part}_s", 0.0) for part in ("main", "threads", "prepare"))
    return round(1e6 * spent / sales, 1) if sales else 0.0
