"""Does serving a large file hold the relay's event loop?  ``/healthz`` latency while
clients fetch a file of ``--mib`` MiB over the relay's HTTP API, one relay process
(SQLite) at a time.

    python -m tillsync.tools.bench_relay_files                 # this code only
    python -m tillsync.tools.bench_relay_files --baseline DIR  # A/B against other code

``--baseline DIR``: a directory holding another version's ``tillsync`` package (for
example ``git archive`` of an older commit, with ``tillsync/`` linking its folders); the
relay is then run alternately with that code (A) and this install's (B), A B A B ...,
each time on the same data folder.  Each run: ``--clients`` clients fetch the file in
a loop for ``--seconds`` while one more client asks ``/healthz`` one request after the
other; reported are the health answer's p50/p99/max, the files served per second and
the relay's CPU per file served (user + system, from /proc).  Progress goes to stderr,
results to stdout.
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
from tillsync.relay.files import store_files
from tillsync.tools.workload import machine, percentile, progress

STORE = "bench-files"
LISTENING = re.compile(r"listening on wss?://([0-9.]+):([0-9]+)")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _env(code: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    return env


def _relay(data: Path, log: Path, code: Path | None) -> tuple[subprocess.Popen[bytes], str]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tillsync.tools.cli", "relay", "serve", "--data",
             str(data), "--port", "0"], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=_env(code), start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = LISTENING.search(log.read_text(errors="replace"))
        if found:
            return proc, f"http://{found.group(1)}:{found.group(2)}"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the relay did not start; see {log}")


async def _measure(url: str, sha: str, token: str, clients: int, seconds: float,
                   pid: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    file_url = f"{url}/api/v1/stores/{STORE}/files/{sha}"
    served, health = 0, []
    stop = time.monotonic() + seconds

    # The relay answers one HTTP request per connection (websockets' process_request).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)
                                     ) as session:
        async def fetch() -> None:
            nonlocal served
            while time.monotonic() < stop:
                async with session.get(file_url, headers=headers) as response:
                    assert response.status == 200, response.status
                    await response.read()
                served += 1

        async def probe() -> None:
            while time.monotonic() < stop:
                start = time.perf_counter()
                async with session.get(f"{url}/healthz") as response:
                    await response.read()
                health.append(time.perf_counter() - start)

        cpu0 = _cpu_seconds(pid)
        await asyncio.gather(probe(), *(fetch() for _ in range(clients)))
        cpu = _cpu_seconds(pid) - cpu0
    ordered = sorted(health)
    return {"served": served, "files_per_s": round(served / seconds, 1),
            "cpu_ms_per_file": round(1000 * cpu / max(served, 1), 2),
            "healthz_ms": {"n": len(ordered), "p50": round(1000 * percentile(ordered, 50), 2),
                           "p99": round(1000 * percentile(ordered, 99), 2),
                           "max": round(1000 * ordered[-1], 2)}}


def _cli(*args: str) -> Any:
    return json.loads(subprocess.run(
        [sys.executable, "-m", "tillsync.tools.cli", *args, "--json"], capture_output=True,
        text=True, check=True, env=_env(None), timeout=120).stdout)


def _store_with_token(data: Path, root: Path) -> str:
    """Enroll a till in the store (a token is for a store with a device), make a token."""
    proc, url = _relay(data, root / "relay-setup.log", None)
    try:
        code = _cli("relay", "enroll", "--data", str(data), "--store", STORE, "--name",
                    "Bench Till", "--role", "admin")["code"]
        asyncio.run(init_enrolled(root / "till", name="Bench Till",
                                  url=url.replace("http://", "ws://"), code=code))
    finally:
        proc.kill()
        proc.wait(timeout=30)
    token = _cli("relay", "token", "--data", str(data), "--store", STORE)["token"]
    assert isinstance(token, str)
    return token


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-relay-files-"))
    data = root / "data"
    data.mkdir()
    ref, _ = store_files(data, STORE).add_bytes(
        b"%PDF-1.7\n" + os.urandom(int(args.mib * 1024 * 1024) - 9))
    token = _store_with_token(data, root)
    codes: list[tuple[str, Path | None]] = [("this", None)]
    if args.baseline:
        codes.insert(0, ("baseline", Path(args.baseline)))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in codes}
    for round_no in range(args.rounds):
        for name, code in codes:
            proc, url = _relay(data, root / f"relay-{name}-{round_no}.log", code)
            try:
                result = asyncio.run(_measure(url, ref.sha256, token, args.clients,
                                              args.seconds, proc.pid))
            finally:
                proc.kill()
                proc.wait(timeout=30)
            progress(f"round {round_no + 1} {name}: {result}")
            results[name].append(result)
    return {"machine": machine(), "file_bytes": ref.size, "clients": args.clients,
            "seconds": args.seconds, "runs": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=10.0, help="the file's size")
    parser.add_argument("--clients", type=int, default=4, help="clients fetching the file")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each code")
    parser.add_argument("--baseline", metavar="DIR", help="another version's code (A/B)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for name, runs in report["runs"].items():
        for result in runs:
            h = result["healthz_ms"]
            print(f"{name:9} healthz p50 {h['p50']:7.2f} ms  p99 {h['p99']:7.2f} ms  max "
                  f"{h['max']:7.2f} ms  ({h['n']} asked)  files {result['files_per_s']:6.1f}/s"
                  f"  relay CPU {result['cpu_ms_per_file']:6.2f} ms/file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
