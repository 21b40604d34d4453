"""Benchmark of the till's automerge-repo endpoint (``peer.amrepo``) beside automerge-repo's
own Node sync server on the same document, in the same run.

    python -m tillsync.tools.bench_amrepo            # human-readable
    python -m tillsync.tools.bench_amrepo --json

1. first sync of a 20,000-product store document to a fresh Node automerge-repo client
   (``tools/amrepo_probe.mjs``): bytes the server sent beside the document's snapshot
   size, wall time to a ready document, and the server process's CPU time per sync; the
   same client against ``tools/amrepo_baseline.mjs`` (a Repo with NodeWSServerAdapter
   holding the same saved document), runs interleaved;
2. one edit from Python (``PUT /api/master/products/ID``) to a connected Node client:
   from sending the request to the client seeing the new price, p50/p99, and to the
   arrival of the frame that brought it (the rest is Node applying it); beside it, the
   baseline server making the same edit itself (``handle.change``, ordered over a pipe)
   to a Node client of its own, the halves of each interleaved.

The till side is the API application ``peer run`` serves, in a child process
(``tools.bench_api --serve``).  Needs node and ``npm ci`` in tests/js.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tillsync.peer.amrepo.protocol import document_id
from tillsync.peer.http.auth import owner_token
from tillsync.peer.store import Till
from tillsync.tools.bench_api import build
from tillsync.tools.ports import free_port
from tillsync.tools.workload import machine, percentile, progress

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "tests" / "js"
TOOLS = ROOT / "tools"


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]).split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Node:
    """A Node script of tools/, run in tests/js so that its packages resolve: the
    script goes in on standard input, commands on a pipe of their own (its fd in
    PROBE_FD), answers come back on standard output."""

    def __init__(self, script: str, env: dict[str, str]) -> None:
        read, write = os.pipe()
        self.proc = subprocess.Popen(["node", "--input-type=module", "-"], cwd=JS, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     pass_fds=(read,),
                                     env={**os.environ, **env, "PROBE_FD": str(read)})
        os.close(read)
        self.commands = os.fdopen(write, "w")
        assert self.proc.stdin is not None
        self.proc.stdin.write((TOOLS / script).read_text())
        self.proc.stdin.close()
        self.pid = self.proc.pid

    def send(self, line: str) -> None:
        self.commands.write(line + "\n")
        self.commands.flush()

    def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the Node process exited with {self.proc.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def quit(self) -> None:
        with contextlib.suppress(OSError):
            self.send("quit")
            self.commands.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _probe(ws_url: str, doc_url: str) -> _Node:
    return _Node("amrepo_probe.mjs", {"PROBE_ARGS": f"{ws_url} {doc_url}"})


def _serve(path: Path) -> subprocess.Popen[str]:
    """The till's API application (what ``peer run`` serves) in a child process."""
    return subprocess.Popen([sys.executable, "-m", "tillsync.tools.bench_api",
                             "--serve", str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def first_sync(ws_url: str, doc_url: str, server_pid: int) -> dict[str, Any]:
    cpu = _cpu(server_pid)
    probe = _probe(ws_url, doc_url)
    try:
        result = probe.line()
    finally:
        probe.quit()
    result["server_cpu_ms"] = (_cpu(server_pid) - cpu) * 1000
    return result


async def edits(ws_url: str, doc_url: str, product: str, count: int,
                edit: Callable[[str, int], Awaitable[None]]) -> list[tuple[float, float]]:
    """Latencies (ms) from calling ``edit`` (a new price) to the Node client seeing it,
    each with the latency to the arrival of the frame that brought it: the rest is the
    client applying it."""
    probe = _probe(ws_url, doc_url)
    probe.line()
    latencies = []
    for price in range(1000, 1000 + count):
        probe.send(f"{product} {price}")
        await asyncio.sleep(0.05)  # the probe has read the line before the edit is sent
        sent = time.time() * 1000
        await edit(product, price)
        answer = probe.line()
        latencies.append((answer["seen"] - sent, answer["arrived"] - sent))
    probe.quit()
    return latencies


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    path = root / "till"
    progress(f"building a store with {args.products} products")
    await build(path, args.products)
    till = await Till.open(path, readonly=True)
    snapshot = till.master.save()
    store, product = till.store_id, till.master.ids("products")[0]
    await till.close()
    (root / "doc.bin").write_bytes(snapshot)
    doc = document_id(store)
    doc_url = f"automerge:{doc}"
    token = owner_token(path)
    child = _serve(path)
    port = free_port()
    baseline = _Node("amrepo_baseline.mjs",
                     {"BASELINE_ARGS": f"{port} {root / 'doc.bin'} {doc}"})
    try:
        assert child.stdout is not None and baseline.proc.stdout is not None
        api = child.stdout.readline().strip()
        assert baseline.proc.stdout.readline().strip() == "listening"
        ours_url = api.replace("http://", "ws://") + f"/automerge?token={token}"
        base_url = f"ws://127.0.0.1:{port}"
        runs: dict[str, list[dict[str, Any]]] = {"tillsync": [], "baseline": []}
        for i in range(args.rounds):  # interleaved, so load hits both alike
            progress(f"first sync, round {i + 1} of {args.rounds}")
            runs["tillsync"].append(first_sync(ours_url, doc_url, child.pid))
            runs["baseline"].append(first_sync(base_url, doc_url, baseline.pid))
        progress(f"{args.edits} edits from Python to a connected Node client, "
                 "and as many made by the baseline server itself")
        latency: dict[str, list[tuple[float, float]]] = {"tillsync": [], "baseline": []}
        async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {token}"}) as session:

            async def put(product: str, price: int) -> None:
                async with session.put(f"{api}/api/master/products/{product}",
                                       json={"price": price}) as answer:
                    assert answer.status == 200, await answer.text()

            async def baseline_edit(product: str, price: int) -> None:
                baseline.send(f"{product} {price}")

            for _ in range(2):  # halves interleaved, so load hits both alike
                latency["tillsync"] += await edits(ours_url, doc_url, product,
                                                   args.edits // 2, put)
                latency["baseline"] += await edits(base_url, doc_url, product,
                                                   args.edits // 2, baseline_edit)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=30)
        baseline.proc.kill()
        baseline.proc.wait()

    def median(side: str, key: str) -> float:
        return float(percentile(sorted(r[key] for r in runs[side]), 50))

    return {"machine": machine(), "products": args.products, "snapshot_bytes": len(snapshot),
            "first_sync": {side: {key: median(side, key) for key in
                                  ("bytes", "first_sync_ms", "server_cpu_ms", "frames")}
                           for side in runs},
            "runs": runs,
            "edit_ms": {side: _edit_figures(pairs) for side, pairs in latency.items()}}


def _edit_figures(pairs: list[tuple[float, float]]) -> dict[str, float]:
    seen, arrived = sorted(p[0] for p in pairs), sorted(p[1] for p in pairs)
    return {"count": len(seen), "p50": percentile(seen, 50), "p99": percentile(seen, 99),
            "max": seen[-1], "arrived_p50": percentile(arrived, 50),
            "arrived_p99": percentile(arrived, 99)}


def render(report: dict[str, Any]) -> str:
    m, snap = report["machine"], report["snapshot_bytes"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}",
             f"document: {report['products']:,} products, snapshot {snap:,} bytes"]
    for side, row in report["first_sync"].items():
        lines.append(f"first sync from {side:<9}: {row['bytes']:,.0f} bytes "
                     f"({row['bytes'] / snap:.2f} x snapshot) in {row['frames']:.0f} frames, "
                     f"{row['first_sync_ms']:.0f} ms to a ready document, server CPU "
                     f"{row['server_cpu_ms']:.0f} ms (medians of {len(report['runs'][side])})")
    for side, e in report["edit_ms"].items():
        what = "a Python edit (HTTP PUT)" if side == "tillsync" else "the server's own edit"
        lines.append(f"{side:<9}: {what} -> Node client: n={e['count']:.0f} p50 "
                     f"{e['p50']:.1f} ms p99 {e['p99']:.1f} ms max {e['max']:.1f} ms; its "
                     f"frame arrived: p50 {e['arrived_p50']:.1f} ms p99 "
                     f"{e['arrived_p99']:.1f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=20_000, help="catalogue size")
    parser.add_argument("--rounds", type=int, default=5, help="first syncs per server")
    parser.add_argument("--edits", type=int, default=100, help="edits timed to the client")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-amrepo-") as tmp:
        report = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
