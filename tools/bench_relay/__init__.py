"""Benchmark of the relay: sales ingested per second from many tills at once.

    python -m tillsync.tools.bench_relay            # human-readable table
    python -m tillsync.tools.bench_relay --json     # one JSON document on stdout

What it does, in one run:

1. makes a relay data folder, one-time codes for every till (and one back-office device
   per store) with ``Relay.new_code``, then starts the relay as a separate process
   (``python -m tillsync.tools.cli relay serve --port 0``), so the load generator never shares its
   event loop; devices enroll over the wire (``peer.client.enroll``), and each store's
   back office pushes the product catalogue and a cashier through a real sync round, so
   every product a sale names is in the relay's master document;
2. before any timing, generates every till's log: a ``shift_open`` and then sales of 1-5
   lines (about one line in four weighed, ``"0.75"`` kg), each entry sealed (canonical
   msgpack, SHA-256 chain, Ed25519 signature), and packs them into ``entries`` frames of
   ``--batch`` entries, byte for byte what ``ClientLink.send_entries`` sends;
3. times all tills at once: each opens a websocket, runs the handshake through a
   ``ClientLink``, then pushes its frames with ``--inflight`` of them unanswered at most,
   until the relay has answered ``ingested`` for every one (an ``ingested`` answer comes
   after the batch's transaction committed: invoice numbers, receipts, stock).  Reports
   sales/s over that wall time, batch latency, CPU used by the relay process (its event
   loop thread and its SQLite threads separately) and by the load generator; then how
   long until every till had received every receipt of its store (the relay pushes each
   store's whole receipt stream to each of its connected devices);
4. stops the relay and checks its database: one invoice per sale, numbered 1..N without
   gap or duplicate per (store, series), no rejected entries, no warnings but
   low-stock alerts;
5. the baseline, in the same run: ``tools.naive_rest`` in its own process, one HTTP
   request and one SQLite transaction (WAL, synchronous=FULL) per sale, idempotency by
   key; the same number of tills each POSTing its sales one after the other over a
   keep-alive connection; checked the same way.
6. the CPU per sale of each: the relay's (its process and its prepare worker, read from
   /proc: event loop, other threads, worker), the load generator's, the baseline
   server's, and the relay's as a share of the baseline's (targets: at most 35 us, and
   at most a tenth).

Progress goes to stderr; results to stdout.  Everything is written in a temporary
directory removed at the end, unless ``--keep DIR`` is given (the relay's log is
``relay.log`` there).

The modules: ``load`` (the workload), ``procs`` (child processes and their CPU),
``relay_run`` (one relay run and its check), ``baseline``, ``report`` (the table) and
``cli`` (arguments and the runs in order).
"""

from __future__ import annotations

from tillsync.tools.bench_relay.cli import create_database, drop_database, main, parser, run
from tillsync.tools.bench_relay.load import TillLoad, TillSpec, build_till, device_key, till_specs
from tillsync.tools.bench_relay.procs import PROJECT_ROOT, Server, children, process_cpu

__all__ = ["PROJECT_ROOT", "Server", "TillLoad", "TillSpec", "build_till", "children",
           "create_database", "device_key", "drop_database", "main", "parser", "process_cpu",
           "run", "till_specs"]
