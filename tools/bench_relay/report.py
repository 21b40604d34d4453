"""The benchmark's report as a table."""

from __future__ import annotations

from typing import Any

RELAY_RUNS = ("relay", "relay_pg", "relay_pg_workers")  # SQLite; PostgreSQL 1 and N processes
TARGET_SALES_PER_SECOND = 30_000
TARGET_RATIO = 20.0
# The relay's own CPU per sale (event loop, threads, prepare worker), and at most this
# share of the naive REST baseline's CPU per sale, measured in the same run.
TARGET_CPU_US = 35.0
TARGET_CPU_RATIO = 0.1

# -- report --------------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    m, w = report["machine"], report["workload"]
    out = [
        "tillsync relay benchmark",
        f"machine   {m['cpu']}, {m['cores']} cores, {m['platform']}",
        f"software  Python {m['python']}, SQLite {m['sqlite']}, aiosqlite {m['aiosqlite']}, "
        f"websockets {report['websockets']}, msgpack {report['msgpack']}, asyncpg "
        f"{report['asyncpg']}, PostgreSQL {report['postgresql'] or '(not run)'}",
        f"workload  {w['tills']} tills in {w['stores']} stores, {w['sales_per_till']:,} sales "
        f"each ({w['sales']:,} sales + {w['tills']} shift_open); 1-5 lines per sale, ~25% "
        "weighed 0.75 kg lines",
        f"          generated and sealed before timing in {w['generate_seconds']:.1f} s "
        f"({w['frame_bytes'] / 1e6:.1f} MB of entries frames)",
        "",
    ]
    for key in RELAY_RUNS:
        r = report.get(key)
        if r is None:
            continue
        lat, cpu = r["batch_latency_ms"], r["relay_cpu"]
        if r.get("backend") == "postgresql":
            where = (f"PostgreSQL {report.get('postgresql', '')}, {r['processes']} relay "
                     f"process{'es on one port' if r['processes'] > 1 else ''}")
        else:
            where = "SQLite WAL synchronous=FULL, 1 relay process"
        out += [
            f"relay on {where} (websockets; {r['tills']} concurrent connections, batches of "
            f"{r['batch']}, {r['inflight']} in flight each)",
            f"  sales ingested      {r['sales']:>10,} in {r['ingest_seconds']:.2f} s   "
            f"{r['sales_per_second']:>10,.0f} sales/s",
            f"  batches             {r['batches']:>10,}   latency ms: p50 {lat['p50']:.1f}  "
            f"p90 {lat['p90']:.1f}  p99 {lat['p99']:.1f}  max {lat['max']:.1f}",
        ]
        if r["receipts_seconds"] is not None:
            out.append(f"  receipts fan-out    every till had every receipt of its store after "
                       f"{r['receipts_seconds']:.2f} s ({r['receipts_delivered']:,} receipts "
                       f"in {r['receipt_frames']:,} frames)")
        pg = (f"; PostgreSQL server {r['postgres_cpu_pct']:.0f}%"
              if r.get("postgres_cpu_pct") is not None else "")
        per_sale = {k: 1e6 * cpu.get(f"{k}_s", 0.0) / r["sales"] for k in
                    ("main", "threads", "prepare")}
        out += [
            f"  CPU over {r['timed_window_s']:.1f} s   relay event loop(s) {cpu['main_pct']:.0f}% "
            f"+ relay threads {cpu['threads_pct']:.0f}% + prepare worker "
            f"{cpu.get('prepare_pct', 0):.0f}% of a core{pg}; "
            f"load generator {r['loadgen_cpu_pct']:.0f}%",
            f"  CPU per sale        relay {sum(per_sale.values()):.0f} us (event loop "
            f"{per_sale['main']:.0f}, threads {per_sale['threads']:.0f}, prepare "
            f"{per_sale['prepare']:.0f}); load generator "
            f"{1e6 * r['loadgen_cpu_s'] / r['sales']:.0f} us",
        ]
        check = r["check"]
        numbered = ", ".join(f"{s['store']} {s['series']} {s['first']}..{s['last']}"
                             for s in check["series"])
        if check["ok"]:
            out.append(f"  check               OK: {numbered}, gapless, no duplicates; "
                       f"{check['receipts'].get('accepted', 0):,} receipts accepted, "
                       "0 rejected, no warnings but "
                       f"{check['warnings'].get('low_stock', 0):,} low-stock alerts")
        else:
            out.append("  check               FAILED: " + "; ".join(check["problems"]))
        out.append("")
    b = report.get("baseline")
    if b is not None:
        lat, cpu = b["request_latency_ms"], b["server_cpu"]
        out += [
            "baseline: naive REST (tools/naive_rest.py, separate process): one HTTP/1.1 POST "
            "and one SQLite",
            "  transaction per sale (WAL, synchronous=FULL; SELECT idempotency key, bump and "
            "read counter,",
            f"  INSERT, COMMIT); {b['tills']} tills POSTing sequentially over keep-alive "
            "connections",
            f"  sales               {b['sales']:>10,} in {b['seconds']:.2f} s   "
            f"{b['sales_per_second']:>10,.0f} sales/s",
            f"  request latency ms  p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  "
            f"p99 {lat['p99']:.2f}  max {lat['max']:.2f}",
            f"  CPU                 server {cpu['main_pct'] + cpu['threads_pct']:.0f}% of a "
            f"core; load generator {b['loadgen_cpu_pct']:.0f}%",
            f"  CPU per sale        server {b['server_cpu_us_per_sale']:.0f} us; load "
            f"generator {b['loadgen_cpu_us_per_sale']:.0f} us",
            "  check               " + ("OK: gapless per store, no duplicates"
                                        if b["check"]["ok"]
                                        else "FAILED: " + "; ".join(b["check"]["problems"])),
            "",
        ]
    t = report["targets"]
    if t["sales_per_second"] is not None:
        out.append(f"target: >= {TARGET_SALES_PER_SECOND:,} sales/s at the relay: "
                   f"{'MET' if t['rate_met'] else 'NOT MET'} "
                   f"({t['sales_per_second']:,.0f} sales/s)")
    if t["ratio"] is not None:
        out.append(f"target: >= {TARGET_RATIO:g}x the baseline: "
                   f"{'MET' if t['ratio_met'] else 'NOT MET'} (relay {t['ratio']:.1f}x "
                   "the naive REST back end)")
    if t["relay_cpu_us_per_sale"] is not None:
        out.append(f"target: relay CPU <= {TARGET_CPU_US:g} us a sale: "
                   f"{'MET' if t['cpu_met'] else 'NOT MET'} "
                   f"({t['relay_cpu_us_per_sale']:.1f} us)")
    if t["cpu_ratio"] is not None:
        out.append(f"target: relay CPU <= {TARGET_CPU_RATIO:g} x the baseline's: "
                   f"{'MET' if t['cpu_ratio_met'] else 'NOT MET'} (relay "
                   f"{t['relay_cpu_us_per_sale']:.1f} us / baseline "
                   f"{t['baseline_cpu_us_per_sale']:.1f} us a sale = {t['cpu_ratio']:.3f})")
    return "\n".join(out)
