"""Does sending files slow the sale path?  Sales through a till's daemon with and
without receipt files flowing to the relay, in one run.

    python -m tillsync.tools.bench_attach            # human-readable table
    python -m tillsync.tools.bench_attach --json     # one JSON document on stdout

A relay process (SQLite) and a till's daemon (``peer run``, relay link on, no LAN
peers) are started.  Then phases alternate, A B A B ...:

- **A, sales only**: ``--sales`` sales posted one after the other to the daemon's
  ``POST /api/entries`` (what ``peer record`` does while the daemon holds the store);
- **B, sales with files**: the same, while another client uploads a ``--file-mib``
  receipt (``POST /api/files``) and records an expense naming it every ``--file-every``
  seconds; the daemon's relay rounds send those files to the relay meanwhile.

Each phase reports sales/s, the p50/p99 of one sale's answer (after its durable
commit) and the daemon's CPU per sale (user + system, from /proc); B also reports the
files the relay confirmed by the phase's end and the bytes sent.  Progress goes to
stderr; results to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tillsync.peer.client import init_enrolled
from tillsync.peer.files import TillFiles
from tillsync.peer.http.app import served_url
from tillsync.peer.http.auth import owner_token
from tillsync.peer.store import Till
from tillsync.tools.bench_store import ready_to_sell, sale_bodies
from tillsync.tools.workload import machine, percentile, progress

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "tillsync.tools.cli", *args], capture_output=True,
                          text=True, env=ENV, check=True, timeout=120)
    return done.stdout


def _start(log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``tillsync ARGS`` as a child process, its output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "tillsync.tools.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=ENV)


async def _setup(root: Path) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], Path]:
    relay = _start(root / "relay.out", "relay", "serve", "--data", str(root / "relay"),
                   "--port", "0", "--max-file-mib", "64")
    deadline = time.monotonic() + 30
    url = None
    while url is None and time.monotonic() < deadline:
        found = re.search(r"listening on (ws://[0-9.]+:[0-9]+)",
                          (root / "relay.out").read_text(errors="replace"))
        url = found.group(1) if found else None
        await asyncio.sleep(0.05)
    assert url is not None, "the relay did not start"
    code = json.loads(_cli("relay", "enroll", "--data", str(root / "relay"), "--store",
                           "bench", "--name", "Bench Till", "--role", "admin",
                           "--json"))["code"]
    till_dir = root / "till"
    await init_enrolled(till_dir, name="Bench Till", url=url, code=code)
    till = await Till.open(till_dir)
    try:
        await ready_to_sell(till)
    finally:
        await till.close()
    daemon = _start(root / "daemon.out", "peer", "run", str(till_dir), "--no-mdns",
                    "--lan-host", "127.0.0.1", "--lan-port", "0", "--api-port", "0",
                    "--interval", "0.5")
    while served_url(till_dir) is None:
        if daemon.poll() is not None or time.monotonic() > deadline + 30:
            raise RuntimeError("the daemon did not start; see " + str(root / "daemon.out"))
        await asyncio.sleep(0.05)
    return relay, daemon, till_dir


async def _files_flowing(session: aiohttp.ClientSession, url: str, every: float,
                         size: int, stop: asyncio.Event) -> int:
    """Upload a receipt and record its expense every ``every`` seconds until ``stop``."""
    sent = 0
    while not stop.is_set():
        data = b"\xff\xd8\xff\xe0" + os.urandom(size - 4)
        async with session.post(url + "/api/files", data=data) as response:
            ref = (await response.json())["file"]
        body = {"amount": 500, "category": "supplies", "description": "receipt",
                "method": "cash", "receipt_file": ref}
        async with session.post(url + "/api/entries",
                                json={"kind": "expense", "body": body}) as response:
            assert response.status == 201, await response.text()
        sent += 1
        try:
            async with asyncio.timeout(every):
                await stop.wait()
        except TimeoutError:
            pass
    return sent


async def _phase(session: aiohttp.ClientSession, url: str, pid: int, bodies: list[Any],
                 files: TillFiles, args: argparse.Namespace, with_files: bool
                 ) -> dict[str, Any]:
    stop = asyncio.Event()
    flowing = asyncio.create_task(_files_flowing(
        session, url, args.file_every, int(args.file_mib * 1024 * 1024), stop)) \
        if with_files else None
    if flowing is not None:
        await asyncio.sleep(args.file_every)  # files are on their way when sales start
    cpu0, start = _cpu_seconds(pid), time.perf_counter()
    samples = []
    for body in bodies:
        began = time.perf_counter_ns()
        async with session.post(url + "/api/entries",
                                json={"kind": "sale", "body": body}) as response:
            assert response.status == 201, await response.text()
            await response.read()
        samples.append(time.perf_counter_ns() - began)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds(pid) - cpu0
    stop.set()
    uploaded = await flowing if flowing is not None else 0
    ordered = sorted(s / 1e6 for s in samples)
    listing = files.listing()
    return {"files": with_files, "sales": len(bodies), "seconds": round(seconds, 3),
            "sales_per_s": round(len(bodies) / seconds, 1),
            "p50_ms": round(percentile(ordered, 50), 2),
            "p99_ms": round(percentile(ordered, 99), 2),
            "daemon_cpu_ms_per_sale": round(cpu * 1000 / len(bodies), 3),
            "files_uploaded": uploaded,
            "files_at_relay_total": sum(1 for f in listing if f["at_relay"]),
            "files_held_total": len(listing)}


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    progress("starting a relay and a till's daemon")
    relay, daemon, till_dir = await _setup(root)
    try:
        url = served_url(till_dir)
        assert url is not None
        headers = {"Authorization": f"Bearer {owner_token(till_dir)}"}
        bodies = sale_bodies(args.sales * args.rounds * 2 + 50, seed=11)
        files = TillFiles(till_dir)
        phases = []
        async with aiohttp.ClientSession(headers=headers) as session:
            for body in bodies[:50]:  # warm-up
                async with session.post(url + "/api/entries",
                                        json={"kind": "sale", "body": body}) as response:
                    await response.read()
            at = 50
            for n in range(args.rounds):
                for with_files in (False, True):
                    progress(f"round {n + 1}: {'with' if with_files else 'without'} files")
                    phases.append(await _phase(session, url, daemon.pid,
                                               bodies[at:at + args.sales], files, args,
                                               with_files))
                    at += args.sales
        # Let the last files land, to show they all reach the relay.
        for _ in range(240):
            if all(f["at_relay"] for f in files.listing()):
                break
            await asyncio.sleep(0.5)
        listing = files.listing()
    finally:
        for proc in (daemon, relay):
            proc.terminate()
            proc.wait(30)

    def mean(key: str, with_files: bool) -> float:
        values = [float(p[key]) for p in phases if p["files"] == with_files]
        return round(sum(values) / len(values), 3)

    return {"machine": machine(), "args": vars(args), "phases": phases,
            "summary": {k: {"without_files": mean(k, False), "with_files": mean(k, True)}
                        for k in ("sales_per_s", "p50_ms", "p99_ms",
                                  "daemon_cpu_ms_per_sale")},
            "files_total": len(listing),
            "files_at_relay_at_end": sum(1 for f in listing if f["at_relay"])}


def render(report: dict[str, Any]) -> str:
    lines = [f"{'phase':<16}{'sales/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/sale':>13}"
             f"{'files up':>10}{'at relay':>10}"]
    for phase in report["phases"]:
        lines.append(f"{'with files' if phase['files'] else 'sales only':<16}"
                     f"{phase['sales_per_s']:>9}{phase['p50_ms']:>9}{phase['p99_ms']:>9}"
                     f"{phase['daemon_cpu_ms_per_sale']:>13}{phase['files_uploaded']:>10}"
                     f"{phase['files_at_relay_total']:>10}")
    summary = report["summary"]
    lines.append("mean: " + ", ".join(f"{k} {v['without_files']} -> {v['with_files']}"
                                       for k, v in summary.items()))
    lines.append(f"files at the relay at the end: {report['files_at_relay_at_end']} of "
                 f"{report['files_total']}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sales", type=int, default=400, help="sales per phase (default 400)")
    p.add_argument("--rounds", type=int, default=3, help="A/B pairs (default 3)")
    p.add_argument("--file-mib", type=float, default=2.0, help="size of each receipt file")
    p.add_argument("--file-every", type=float, default=0.25,
                   help="seconds between two receipts in a B phase (default 0.25)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
