"""The ``tillsync`` command line.

Every verb that reports has ``--json``.  Exit status: 0 done, 1 a check failed
(``peer verify``), 2 bad input (nothing was stored), 3 the store cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from tillsync.peer import client, logfmt
from tillsync.peer.chainstop import describe as describe_stop
from tillsync.peer.chainstop import stopped_at
from tillsync.peer.enrollment import enroll_existing, holds_store
from tillsync.peer.errors import InvalidInput, StoreCorrupt, StoreError, TillsyncError
from tillsync.peer.http.auth import owner_token
from tillsync.peer.lan.node import LAN_PORT, Node, NodeConfig, read_status
from tillsync.peer.shutdown import (
    SHUTDOWN_GRACE,
    SHUTDOWN_HELP,
    Deadlines,
    Shutdown,
    run_until_signal,
)
from tillsync.peer.store import Till, is_locked
from tillsync.peer.sync.deadlines import (
    CLOSE_BUSY,
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_IDLE,
    HANDSHAKE_TIMEOUT,
)
from tillsync.relay.faults import quiet_library_tracebacks
from tillsync.relay.limits import IDLE_TIMEOUT, MAX_HANDSHAKES, Limits
from tillsync.relay.server import DB_FILE, Relay, RelayConfig, die_with_parent, running, tune_gc
from tillsync.relay.storage import is_postgres
from tillsync.relay.storage.postgres import describe
from tillsync.relay.storage.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from tillsync.relay.workers import serve_workers
from tillsync.schemas import (
    COLLECTIONS,
    ENTRY_KINDS,
    SchemaViolation,
    UnknownCollection,
    UnknownKind,
)
from tillsync.tools import api_cli, backup
from tillsync.tools import demo as demo_module
from tillsync.tools.cli_ops import OpsError, add_peer_enroll, before_serve, check_hours

LOCK_WAIT = 5.0  # seconds a writing verb waits for `peer run` to finish its round
EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_STORE, EXIT_RELAY = 0, 1, 2, 3, 4

EPILOG = """\
exit status: 0 done, 1 a check failed, 2 bad input (nothing stored), 3 store unusable,
4 the relay could not be reached or refused.
money is integer minor units (1250 = 12.50); quantities are integers or decimal strings
("0.75"); --body takes JSON, @FILE to read it from a file, or - for standard input."""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


Number = TypeVar("Number", int, float)


def _above_zero(convert: Callable[[str], Number]) -> Callable[[str], Number]:
    """An argparse type: ``convert``'s number, refused unless it is more than 0."""
    def parse(text: str) -> Number:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text}: must be more than 0")
        return value
    return parse


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _read_body(text: str) -> Any:
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise CliError(f"--body {text}: {exc.strerror}", EXIT_BAD_INPUT) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--body is not valid JSON: {exc}", EXIT_BAD_INPUT) from None


def _emit(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(human())


# -- peer verbs ------------------------------------------------------------------------


async def peer_init(args: argparse.Namespace) -> int:
    if bool(args.relay) != bool(args.code):
        raise CliError("--relay and --code go together (get a code from `tillsync relay "
                       "enroll`)", EXIT_BAD_INPUT)
    kept = bool(args.relay) and holds_store(Path(args.dir))  # a till that sold on its own
    if kept:
        info = await enroll_existing(Path(args.dir), url=args.relay, code=args.code,
                                     tls_pin=args.tls_pin, tls_ca=args.tls_ca)
    elif args.relay:
        info = await client.init_enrolled(Path(args.dir), name=args.name, url=args.relay,
                                          tls_pin=args.tls_pin, tls_ca=args.tls_ca,
                                          code=args.code, series=args.series)
    else:
        info = await Till.init(args.dir, name=args.name, series=args.series,
                               store_id=args.store)
    owner_token(Path(args.dir))  # the HTTP API's token, owner-only beside the key
    public = {k: info[k] for k in ("device_id", "name", "series", "store_id", "public_key")}
    _emit(args, public, lambda: (
        (f"enrolled the store in {args.dir}, its log and master data kept\n" if kept
         else f"initialised store in {args.dir}\n") +
        f"  device   {info['device_id']} ({info['name']})\n"
        f"  store    {info['store_id']}"
        + (f", enrolled at {info['relay_url']}\n  store key {info['relay_key']} (pinned: "
           "`relay enroll` printed it too)\n" if info.get("relay_url") else "\n")
        + f"  tickets  {info['series']}-000001, {info['series']}-000002, ...\n"
        f"  key      {args.dir}/device.key (owner-only; keep it secret, back it up)"
    ))
    return EXIT_OK


async def _through_daemon(path: str, method: str, route: str, body: dict[str, Any]
                          ) -> dict[str, Any]:
    """Write through the HTTP API of the ``peer run`` holding the store."""
    status, answer = await api_cli.call(Path(path), method, route, body)
    if status >= 400:
        code = EXIT_BAD_INPUT if status < 500 and status != 401 else EXIT_STORE
        raise CliError(api_cli.refusal(answer) + ("\nnothing was stored."
                                                  if code == EXIT_BAD_INPUT else ""), code)
    return answer


async def peer_put(args: argparse.Namespace) -> int:
    body = _read_body(args.body)
    if not isinstance(body, dict):
        raise CliError("--body must be a JSON object", EXIT_BAD_INPUT)
    if await _daemon_serves(args.dir):
        record = (await _through_daemon(args.dir, "PUT", f"/api/master/{args.collection}/"
                                        f"{quote(args.id, safe='')}", body))["record"]
    else:
        async with await Till.open(args.dir, wait=LOCK_WAIT) as till:
            record = await till.put(args.collection, args.id, body)
    _emit(args, {"id": args.id, **record}, lambda: json.dumps({"id": args.id, **record},
                                                              sort_keys=True))
    return EXIT_OK


async def peer_get(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, readonly=True) as till:
        if args.id is None:
            data: Any = till.all(args.collection)
        else:
            data = till.get(args.collection, args.id)
            if data is None:
                raise CliError(f"no {args.collection} record {args.id!r}", EXIT_BAD_INPUT)
    print(json.dumps(data, indent=2, sort_keys=True))
    return EXIT_OK


async def peer_record(args: argparse.Namespace) -> int:
    body = _read_body(args.body)
    if await _daemon_serves(args.dir):
        answer = await _through_daemon(args.dir, "POST", "/api/entries",
                                       {"kind": args.kind, "body": body,
                                        "client_id": args.client_id})
        data, replay = answer["entry"], bool(answer.get("replay"))
    else:
        async with await Till.open(args.dir, wait=LOCK_WAIT) as till:
            replay = args.client_id is not None and \
                await till.entry(str(args.client_id).lower()) is not None
            data = (await till.record(args.kind, body, client_id=args.client_id)).to_json()

    def human() -> str:
        what = f"{data['kind']} seq {data['seq']} client_id {data['client_id']}" + (
            f" ticket {data['ticket']}" if data.get("ticket") else "")
        if replay:
            return f"already recorded (a retry with the same --client-id): {what}"
        if data["kind"] == "sale":
            what += "; its official invoice number comes with the relay's receipt at sync"
        return f"recorded {what}"

    _emit(args, data, human)
    return EXIT_OK


async def peer_stock(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, readonly=True) as till:
        rows = await till.stock()

    def human() -> str:
        lines = [f"{'product':<24} {'sku':<12} {'stock':>10}  note"]
        for r in rows:
            if r["volatile"]:
                value, note = "-", f"volatile, suggested price {r['suggested_price']}"
            else:
                value = r["qty"]
                note = "LOW (reorder level " + r["reorder_level"] + ")" if r.get("low") else ""
            lines.append(f"{str(r['name'])[:24]:<24} {str(r['sku'])[:12]:<12} {value:>10}  {note}")
        return "\n".join(lines) if rows else "no products"

    _emit(args, rows, human)
    return EXIT_OK


def _held(path: str) -> bool:
    """True if a ``peer run`` daemon holds the store (its lock is taken)."""
    return is_locked(Path(path))


async def _daemon_serves(path: str) -> bool:
    """True if writes should go through the daemon's HTTP API: it holds the store and
    serves the API.  A daemon that has just taken the store serves it a moment later:
    wait for it (or for the lock to go) up to ``LOCK_WAIT`` seconds."""
    deadline = time.monotonic() + LOCK_WAIT
    while _held(path):
        if api_cli.serving(Path(path)):
            return True
        if time.monotonic() > deadline:
            return False  # Till.open reports who holds the store
        await asyncio.sleep(0.05)
    return False


def _lan_lines(lan: dict[str, Any] | None) -> list[str]:
    if lan is None:
        return ["lan         no daemon has run here (`tillsync peer run`)"]
    if lan.get("stale"):
        return [f"lan         daemon not running (last report {lan['age']:.0f} s ago)"]
    lines = [f"lan         listening on {lan.get('listening') or 'nothing (LAN off)'}"]
    for p in lan["peers"]:
        state = "connected" if p["connected"] else "seen, not connected"
        lines.append(f"            {p['name']:<14} {p['address']:<24} {state}; behind by "
                     f"{p['behind_entries']} entries, {p['behind_receipts']} receipts"
                     + (f"; last error: {p['last_error']}" if p["last_error"] else ""))
    if not lan["peers"]:
        lines.append("            no peer seen yet")
    return lines


async def peer_status(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, readonly=True) as till:
        status = await till.status()
        status["stopped"] = await stopped_at(till)
    lan = read_status(Path(args.dir))
    if lan is not None:
        lan["age"] = time.time() - lan.get("updated", 0)
        lan["stale"] = lan["age"] > 10 or not _held(args.dir)
    status["lan"] = lan

    def human() -> str:
        shifts = ", ".join(f"{s['shift_client_id']} (expected cash {s['expected_cash']})"
                           for s in status["open_shifts"]) or "none"
        return "\n".join([
            f"device      {status['device_id']} ({status['name']})",
            f"store       {status['store_id']}"
            + (f", key {status['store_key']}" if status["store_key"] else ""),
            f"log         {status['last_seq']} entries of mine; last ticket "
            f"{status['last_ticket'] or 'none'}",
            f"pending     {status['pending']} not yet acknowledged by the relay",
            *([f"STOPPED     {describe_stop(status['stopped'])}"] if status["stopped"] else []),
            "relay       none configured (a store of its own)" if status["relay"] is None
            else f"relay       {status['relay']}, last contact "
                 f"{status['last_contact'] or 'never'}"
                 + (f"\n            last error: {status['last_error']}"
                    if status["last_error"] else ""),
            f"receipts    {status['waiting']} waiting, {len(status['rejected'])} rejected"
            + "".join(f"\n            rejected {r['kind']} seq {r['seq']}: {r.get('code')}: "
                      f"{r.get('message')}" for r in status["rejected"]),
            *(f"revoked     {status['devices'].get(d, {}).get('name') or d}: entries after "
              f"seq {upto} refused" for d, upto in status["revoked"].items()),
            f"open shifts {shifts}",
            f"held sales  {len(status['held_sales'])}",
            "master      " + ", ".join(f"{n} {c}" for c, n in status["master"].items()),
            *_lan_lines(lan),
        ])

    _emit(args, status, human)
    return EXIT_OK


async def peer_verify(args: argparse.Namespace) -> int:
    try:
        till = await Till.open(args.dir, readonly=True)
    except StoreCorrupt as exc:  # damage found before the chain walk: still a failed check
        damage = str(exc)
        _emit(args, {"ok": False, "first_break": None, "problems": [damage]},
              lambda: f"FAILED: {damage}")
        return EXIT_CHECK_FAILED
    async with till:
        def progress(n: int) -> None:
            if not args.json:
                print(f"  checked {n} entries...", file=sys.stderr)

        report = await till.verify(progress=progress)
    data = report.to_json()

    def human() -> str:
        if report.ok:
            return (f"ok: {report.entries} entries of {report.devices} device(s); every chain "
                    "link and signature holds")
        lines = [f"FAILED after checking {report.entries} entries"]
        if report.first_break is not None:
            lines.append(f"  first broken link: {report.first_break}")
        lines.extend(f"  {p}" for p in report.problems)
        return "\n".join(lines)

    _emit(args, data, human)
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED


async def peer_sync(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, wait=10.0) as till:
        report = await client.sync_once(till, args.relay)
    data = vars(report)
    _emit(args, data, lambda: (
        f"synced: pushed {report.pushed} entries, received {report.receipts} receipts "
        f"({report.accepted} accepted, {report.waiting} waiting, {report.rejected} rejected "
        f"of mine), {report.doc_changes} document messages; {report.pending} pending"))
    if report.stopped is not None:
        raise CliError(describe_stop(report.stopped), EXIT_RELAY)
    return EXIT_OK


async def peer_run(args: argparse.Namespace) -> int:
    logfmt.configure(args.log_format, "%(asctime)s %(name)s %(message)s")
    if args.log_format == "json":  # every line of this daemon is about its own till
        async with await Till.open(args.dir, readonly=True) as till:
            logfmt.bind(store=till.store_id, device=till.device_id)
    deadlines = _deadlines(args)
    if args.no_lan:
        await run_until_signal(f"the daemon of {args.dir}", deadlines, client.run(
            Path(args.dir), url=args.relay, interval=args.interval))
        return EXIT_OK
    config = NodeConfig(Path(args.dir), relay=args.relay, lan_host=args.lan_host,
                        lan_port=args.lan_port, peers=args.peer, mdns=not args.no_mdns,
                        interval=args.interval, relay_enabled=not args.no_relay,
                        handshake_timeout=args.lan_handshake_timeout,
                        api_host=args.api_host, api_port=None if args.no_api else args.api_port,
                        deadlines=deadlines)
    node = Node(config)
    shutdown = Shutdown(f"the daemon of {args.dir}", node.stop, deadlines)
    shutdown.install(asyncio.get_running_loop())
    await node.run()
    shutdown.done()
    return EXIT_OK


def _deadlines(args: argparse.Namespace) -> Deadlines:
    if not args.shutdown_grace > 0:
        raise CliError(f"--shutdown-grace must be more than 0 seconds, not "
                       f"{args.shutdown_grace}", EXIT_BAD_INPUT)
    return Deadlines.within(args.shutdown_grace)


async def peer_receipts(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, readonly=True) as till:
        receipts = await till.receipts()
    if args.mine:
        receipts = [r for r in receipts if r.get("device_id") == till.device_id]
    rows = [{k: (v.hex() if isinstance(v, bytes) else v) for k, v in r.items()}
            for r in receipts]

    def human() -> str:
        lines = [f"{'ticket':<16} {'invoice':<14} {'status':<9} {'total':>9}  kind / note"]
        for r in receipts:
            invoice = f"{r['series']}-{r['invoice_no']:06d}" if "invoice_no" in r else ""
            note = r.get("error", {}).get("message", "") or ", ".join(
                w["code"] for w in r.get("warnings", []))
            total = f"{r['total'] / 100:.2f}" if "total" in r else ""
            lines.append(f"{r.get('ticket') or '':<16} {invoice:<14} {r['status']:<9} "
                         f"{total:>9}  {r.get('kind', '')} {r.get('server_id', '')} {note}")
        return "\n".join(lines) if receipts else "no receipts yet: run `tillsync peer sync`"

    _emit(args, rows, human)
    return EXIT_OK


def _relay_logging(worker: bool, log_format: str = "text") -> None:
    fmt = "%(asctime)s [%(process)d] %(name)s %(message)s" if worker else \
        "%(asctime)s %(name)s %(message)s"
    logfmt.configure(log_format, fmt, pid=worker)
    # One line per device session comes from tillsync.relay; the library's own
    # open/close lines would double them.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    quiet_library_tracebacks()


def _check_db(args: argparse.Namespace) -> None:
    if args.db is not None and not is_postgres(args.db):
        raise CliError(f"--db takes a postgresql://user@host:port/database URL, not "
                       f"{args.db!r}", EXIT_BAD_INPUT)
    if getattr(args, "cert_days", 1) <= 0:
        raise CliError(f"--cert-days must be more than 0, not {args.cert_days}",
                       EXIT_BAD_INPUT)


def relay_serve_workers(args: argparse.Namespace) -> int:
    """``relay serve --workers N``: this process supervises N relay processes (run from
    the main thread, outside any event loop: it handles the signals)."""
    _check_db(args)
    if args.db is None:
        raise CliError("--workers needs --db postgresql://...: relay processes share "
                       "one PostgreSQL database (SQLite serves one process)", EXIT_BAD_INPUT)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CliError("--tls-cert and --tls-key go together", EXIT_BAD_INPUT)
    limits = _limits(args)
    grace = _deadlines(args).exit
    before_serve(args)
    _relay_logging(worker=True, log_format=args.log_format)
    asyncio.run(migrate(args.db, args.db_wait))  # once, before the workers start
    extra = ["--cert-days", str(args.cert_days), "--log-format", args.log_format,
             "--handshake-timeout", str(limits.handshake_timeout),
             "--idle-timeout", str(limits.idle_timeout),
             "--max-handshakes", str(limits.max_handshakes)]
    if args.tls_cert:
        extra += ["--tls-cert", args.tls_cert, "--tls-key", args.tls_key]
    return serve_workers(workers=args.workers, data=Path(args.data), db=args.db,
                         host=args.host, port=args.port, db_wait=args.db_wait, extra=extra,
                         scheme="wss" if args.tls_cert else "ws",
                         grace=grace)


async def relay_serve(args: argparse.Namespace) -> int:
    _check_db(args)
    _relay_logging(worker=args.worker_of is not None, log_format=args.log_format)
    if args.worker_of is not None:
        die_with_parent(args.worker_of)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CliError("--tls-cert and --tls-key go together", EXIT_BAD_INPUT)
    lock = before_serve(args)  # noqa: F841 - held while the relay runs
    config = RelayConfig(Path(args.data), args.host, args.port, db=args.db,
                         reuse_port=args.reuse_port, db_wait=args.db_wait,
                         tls_cert=args.tls_cert, tls_key=args.tls_key,
                         cert_days=args.cert_days, limits=_limits(args),
                         deadlines=_deadlines(args))
    stopping = asyncio.Event()
    shutdown = Shutdown("the relay", stopping.set, config.deadlines)
    shutdown.install(asyncio.get_running_loop())
    async with running(config) as (_, port):
        tune_gc()
        where = f"database {describe(args.db)}" if args.db else f"data in {args.data}"
        scheme = "wss" if args.tls_cert else "ws"
        print(f"relay listening on {scheme}://{args.host}:{port} ({where})", flush=True)
        await stopping.wait()
    shutdown.done()
    return EXIT_OK


def _limits(args: argparse.Namespace) -> Limits:
    return Limits(args.handshake_timeout, args.idle_timeout, args.max_handshakes)


async def migrate(db: str, wait: float) -> int:
    from tillsync.relay.storage import postgres

    conn = await postgres.connect_retrying(db, wait)
    try:
        return await postgres.migrate_schema(conn)
    finally:
        await conn.close()


async def relay_migrate(args: argparse.Namespace) -> int:
    """Create or upgrade the relay's schema in the database (the relay also does it when
    it starts)."""
    _check_db(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.db is None and args.data is None:
        raise CliError("relay migrate needs --db URL (PostgreSQL) or --data DIR (SQLite)",
                       EXIT_BAD_INPUT)
    if args.db is None:
        relay = await Relay.open(Path(args.data))  # SQLite: made up to date on opening
        await relay.close()
        version, where = SQLITE_SCHEMA_VERSION, str(Path(args.data) / DB_FILE)
    else:
        version, where = await migrate(args.db, args.db_wait), describe(args.db)
    _emit(args, {"schema_version": version, "database": where},
          lambda: f"relay schema at version {version} in {where}")
    return EXIT_OK


async def relay_enroll(args: argparse.Namespace) -> int:
    _check_db(args)
    check_hours(args.hours)
    relay = await Relay.open(Path(args.data), args.db)
    try:
        code = await relay.new_code(args.store, args.name, args.role,
                                    timedelta(hours=args.hours))
        store_key = (await relay.store_key(args.store)).public_bytes.hex()
    finally:
        await relay.close()
    data = {"code": code, "store": args.store, "name": args.name,
            "expires_in_hours": args.hours, "store_key": store_key}
    if not args.json:  # the code alone on stdout, so that CODE=$(tillsync relay enroll ...)
        print(f"one-time code for '{args.name}' in store {args.store}, valid {args.hours} h: "
              f"tillsync peer init DIR --name '{args.name}' --relay URL --code {code}\n"
              f"store key {store_key} (the till shows the key it pinned in `peer status`)",
              file=sys.stderr)
    _emit(args, data, lambda: code)
    return EXIT_OK


async def relay_token(args: argparse.Namespace) -> int:
    _check_db(args)
    relay = await Relay.open(Path(args.data), args.db)
    try:
        token = await relay.new_token(args.store)
    finally:
        await relay.close()
    _emit(args, {"store": args.store, "token": token}, lambda: (
        f"{token}\n(reporting API token for store {args.store}; shown once, the relay keeps "
        f"only its hash: curl -H 'Authorization: Bearer {token}' "
        f"http://RELAY/api/v1/stores/{args.store}/reports/sales)"))
    return EXIT_OK


async def relay_revoke(args: argparse.Namespace) -> int:
    _check_db(args)
    relay = await Relay.open(Path(args.data), args.db)
    try:
        row = await relay.revoke(args.store, args.device)
    finally:
        await relay.close()
    _emit(args, {"store": row.store, "device": row.device_id, "name": row.name,
                 "revoked_at": row.revoked_at, "upto": row.revoked_upto}, lambda: (
        f"revoked {row.name} ({row.device_id}) of store {row.store} at {row.revoked_at}: "
        f"its entries up to seq {row.revoked_upto} stay valid, later ones are refused; "
        "every till learns it on its next contact with the relay or a till that has"))
    return EXIT_OK


# -- reports ---------------------------------------------------------------------------


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as aligned text columns (numbers right-aligned)."""
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), int | float) or r.get(c) is None for r in rows)
               for c in columns]
    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w)
                         for v, w, n in zip(values, widths, numeric, strict=True)).rstrip()
    return "\n".join([line(columns), *(line(row) for row in cells)])


def _csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    import csv
    import io
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().rstrip("\n")


async def _report_storage(args: argparse.Namespace) -> Any:
    from tillsync.relay.storage import open_storage
    if args.db is None:
        if args.data is None:
            raise CliError("report needs --data DIR (SQLite) or --db URL (PostgreSQL)",
                           EXIT_BAD_INPUT)
        if not (Path(args.data) / DB_FILE).exists():
            raise CliError(f"no relay database in {args.data} ({DB_FILE} is missing)",
                           EXIT_BAD_INPUT)
    return await open_storage(args.db, Path(args.data or ".") / DB_FILE, wait=args.db_wait)


async def report_sales(args: argparse.Namespace) -> int:
    from tillsync.relay import reports
    within = reports.Range.parse(args.start, args.end)
    if args.product is not None and args.by != "product":
        raise CliError("--product goes with --by product", EXIT_BAD_INPUT)
    storage = await _report_storage(args)
    try:
        if args.by == "product":
            rows = await reports.sales_by_product(storage, args.store, within, args.product)
            columns: Sequence[str] = ("product_id", "qty", "revenue", "sales",
                                      "avg_unit_price")
        elif args.by == "cashier":
            rows = await reports.sales_by_cashier(storage, args.store, within)
            columns = ("cashier_id", "sales", "revenue")
        elif args.by == "till":
            rows = await reports.sales_by_till(storage, args.store, within)
            columns = ("device_id", "name", "sales", "revenue")
        else:
            rows = await reports.sales_by_period(storage, args.store, args.period, within)
            columns = ("period", "sales", "revenue")
    finally:
        await storage.close()
    _report_out(args, rows, columns, "no numbered sales in this range")
    return EXIT_OK


async def report_invoices(args: argparse.Namespace) -> int:
    from tillsync.relay import reports
    within = reports.Range.parse(args.start, args.end)
    storage = await _report_storage(args)
    try:
        if args.ticket is not None:
            found = await reports.invoice_of_ticket(storage, args.store, args.ticket)
            if found is None:
                raise CliError(f"ticket {args.ticket} has no invoice number at the relay "
                               "(not synced yet, rejected, or no such ticket)", EXIT_BAD_INPUT)
            rows = [found]
            register = None
        else:
            register = await reports.invoice_register(storage, args.store, within,
                                                      args.limit)
            rows = register["invoices"]
    finally:
        await storage.close()
    columns = ("series", "invoice_no", "ticket", "device_id", "total", "client_created_at",
               "issued_at")
    if register is None or args.csv:
        _report_out(args, rows, columns, "")
    elif args.json:
        print(json.dumps(register, indent=2, sort_keys=True))
    else:
        print(_table(rows, columns) if rows else "no invoices in this range")
        if args.limit is not None and len(rows) < register["count"]:
            print(f"the {len(rows)} sold last of {register['count']} invoices in this range")
        print(f"{register['count']} invoices in this range, total {register['total']}")
        for series in register["series"]:
            missing = series["missing"]
            print(f"series {series['series']}: {series['issued']} issued, 1..{series['highest']}"
                  + (f", MISSING {missing}" if missing else ", no gap"))
    return EXIT_OK


async def report_state(args: argparse.Namespace) -> int:
    """shifts, stock, alerts, devices: one list each."""
    from tillsync.relay import reports
    within = reports.Range.parse(getattr(args, "start", None), getattr(args, "end", None))
    storage = await _report_storage(args)
    try:
        if args.verb == "stock":
            rows = await reports.stock(storage, args.store)
            columns: Sequence[str] = ("product_id", "name", "qty", "reorder_level", "low",
                                      "suggested_price")
        elif args.verb == "shifts":
            rows = await reports.shifts(storage, args.store, within)
            columns = ("opened_at", "till", "cashier_id", "server_id", "opening_cash",
                       "cash_sales", "cash_refunds", "cash_in", "cash_out", "other_cash",
                       "expected_cash", "counted_cash", "variance", "variance_reason")
        elif args.verb == "alerts":
            rows = await reports.alerts(storage, args.store, within)
            columns = ("at", "product_id", "qty", "reorder_level", "client_id")
        else:
            rows = await reports.devices(storage, args.store)
            columns = ("name", "device_id", "role", "last_seen", "entries", "lag_s",
                       "waiting", "rejected", "last_rejection", "rejected_in_its_name",
                       "revoked_at")
    finally:
        await storage.close()
    _report_out(args, rows, columns, f"no {args.verb} for store {args.store}")
    return EXIT_OK


def _report_out(args: argparse.Namespace, rows: list[dict[str, Any]], columns: Sequence[str],
                empty: str) -> None:
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
    elif args.csv:
        print(_csv(rows, columns))
    else:
        print(_table(rows, columns) if rows else empty)


async def peer_log(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, readonly=True) as till:
        entries = await till.entries(kind=args.kind)
    data = [e.to_json() for e in entries]
    _emit(args, data, lambda: "\n".join(
        f"{e.seq:>6} {e.client_created_at} {e.kind:<16} {e.ticket or '':<16} {e.client_id}"
        for e in entries
    ) or "the log is empty")
    return EXIT_OK


async def peer_balances(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, readonly=True) as till:
        balances = await till.balances()
    _emit(args, balances, lambda: "\n".join(f"{c:<36} {b:>12}" for c, b in balances.items())
          or "no customer owes anything")
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------


def _log_format_flag(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--log-format", choices=logfmt.FORMATS, default="text",
                     help="text lines (default), or one JSON object a line with time, "
                          "level, logger, message, store, device and connection")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tillsync",
        description="Offline-first sync store for point-of-sale tills.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    areas = parser.add_subparsers(dest="area", required=True,
                                  metavar="{peer,relay,report,demo}")
    relay = areas.add_parser("relay", help="the relay server", epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    relay_verbs = relay.add_subparsers(dest="verb", required=True)
    sub = relay_verbs.add_parser("serve", help="serve devices over websockets",
                                 description="serve devices over websockets")
    sub.add_argument("--data", required=True, metavar="DIR", help="the relay's data folder")
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sub.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    db_help = ("PostgreSQL database shared by relay processes, postgresql://user@host:port/"
               "db (default: SQLite in DIR)")
    sub.add_argument("--db", metavar="URL", help=db_help)
    sub.add_argument("--workers", type=int, default=1, metavar="N",
                     help="start N relay processes sharing the port (needs --db)")
    sub.add_argument("--db-wait", type=float, default=60.0, metavar="SECONDS",
                     help="how long to keep retrying an unreachable database (default 60)")
    sub.add_argument("--tls-cert", metavar="FILE",
                     help="serve wss://: the relay's certificate (chain), PEM")
    sub.add_argument("--tls-key", metavar="FILE", help="its private key, PEM")
    sub.add_argument("--cert-days", type=float, default=90.0, metavar="DAYS",
                     help="validity of the device certificates the relay issues (default "
                     "90; each contact renews a device's): a till that stays away "
                     "longer is refused by the other tills until it syncs again")
    _log_format_flag(sub)
    sub.add_argument("--handshake-timeout", type=_above_zero(float), default=HANDSHAKE_TIMEOUT,
                     metavar="SECONDS", help="close a connection that has not logged in "
                     f"this long after opening (default {HANDSHAKE_TIMEOUT:g}; close code "
                     f"{CLOSE_HANDSHAKE_TIMEOUT})")
    sub.add_argument("--idle-timeout", type=_above_zero(float), default=IDLE_TIMEOUT,
                     metavar="SECONDS",
                     help="close a logged-in link on which no frame has passed either way "
                     f"this long; websocket pings do not count (default {IDLE_TIMEOUT:g}; "
                     f"close code {CLOSE_IDLE})")
    sub.add_argument("--max-handshakes", type=_above_zero(int), default=MAX_HANDSHAKES, metavar="N",
                     help="connections of one relay process that may be logging in at once; "
                     f"more are closed at once with code {CLOSE_BUSY} (default "
                     f"{MAX_HANDSHAKES})")
    sub.add_argument("--shutdown-grace", type=float, default=SHUTDOWN_GRACE, metavar="SECONDS",
                     help=SHUTDOWN_HELP)
    sub.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    sub.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)
    sub.set_defaults(func=relay_serve)
    sub = relay_verbs.add_parser("migrate", help="create or upgrade the relay's schema",
                                 description="create or upgrade the relay's schema (serve "
                                 "does it too on start)")
    sub.add_argument("--data", metavar="DIR", help="the relay's data folder (SQLite)")
    sub.add_argument("--db", metavar="URL", help=db_help)
    sub.add_argument("--db-wait", type=float, default=60.0, metavar="SECONDS",
                     help="how long to keep retrying an unreachable database (default 60)")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(func=relay_migrate)
    sub = relay_verbs.add_parser("enroll", help="make a one-time code to enroll a device",
                                 description="make a one-time code to enroll a device")
    sub.add_argument("--data", required=True, metavar="DIR", help="the relay's data folder")
    sub.add_argument("--db", metavar="URL", help=db_help)
    sub.add_argument("--store", required=True, help="store id (created on first use)")
    sub.add_argument("--name", required=True, help="the device's name")
    sub.add_argument("--role", default="till", choices=["till", "backoffice", "admin"])
    sub.add_argument("--hours", type=float, default=24.0, help="validity (default 24)")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(func=relay_enroll)
    sub = relay_verbs.add_parser("token", help="make a token of the reporting API",
                                 description="make a token of the relay's reporting API "
                                 "for one store (GET /api/v1/stores/STORE/reports/NAME)")
    sub.add_argument("--data", required=True, metavar="DIR", help="the relay's data folder")
    sub.add_argument("--db", metavar="URL", help=db_help)
    sub.add_argument("--store", required=True, help="store id")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(func=relay_token)
    sub = relay_verbs.add_parser("revoke", help="cut a device off (a stolen till)",
                                 description="revoke a device: it can no longer connect, and "
                                 "its entries after the last one the relay holds are refused "
                                 "by the relay and, once they learn it, by every till")
    sub.add_argument("--data", required=True, metavar="DIR", help="the relay's data folder")
    sub.add_argument("--db", metavar="URL", help=db_help)
    sub.add_argument("--store", required=True, help="store id")
    sub.add_argument("--device", required=True, metavar="ID_OR_NAME",
                     help="the device's id, or its name if unique in the store")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(func=relay_revoke)
    backup.add_relay_verb(relay_verbs)
    report = areas.add_parser("report", help="central reports from the relay's data",
                              description="reports computed from what the relay has "
                              "ingested, one store at a time (numbered sales only)",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    report_verbs = report.add_subparsers(dest="verb", required=True)
    for name, help_text, func in (
            ("sales", "sales by day/week/month, by product, till or cashier", report_sales),
            ("invoices", "the invoice register with its gap check, or one ticket's invoice",
             report_invoices),
            ("shifts", "shift (Z) reports: opening, cash sales, in/out, expected vs counted",
             report_state),
            ("stock", "current stock per product, reorder levels, low ones", report_state),
            ("alerts", "low-stock alerts: which entry took a product below its level",
             report_state),
            ("devices", "every device: last contact, entries held, lag of the latest, entries "
                        "waiting, rejections (of the entries it sent, and of entries in its "
                        "name sent by others), revocation",
             report_state)):
        sub = report_verbs.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--data", metavar="DIR", help="the relay's data folder (SQLite)")
        sub.add_argument("--db", metavar="URL", help=db_help)
        sub.add_argument("--db-wait", type=float, default=5.0, metavar="SECONDS",
                         help="how long to keep retrying an unreachable database (default 5)")
        sub.add_argument("--store", required=True, help="store id")
        if name not in ("stock", "devices"):
            sub.add_argument("--from", dest="start", metavar="YYYY-MM-DD",
                             help="first day (UTC; client time for sales)")
            sub.add_argument("--to", dest="end", metavar="YYYY-MM-DD",
                             help="last day, included")
        out = sub.add_mutually_exclusive_group()
        out.add_argument("--json", action="store_true", help="print JSON")
        out.add_argument("--csv", action="store_true", help="print CSV")
        sub.set_defaults(func=func)
        if name == "sales":
            sub.add_argument("--by", choices=("period", "product", "till", "cashier"),
                             default="period",
                             help="group by period (default), product, till or cashier")
            sub.add_argument("--period", choices=("day", "week", "month"), default="day",
                             help="with --by period: day (default), week or month")
            sub.add_argument("--product", metavar="ID",
                             help="with --by product: only this product")
        elif name == "invoices":
            sub.add_argument("--ticket", help="only the invoice this provisional ticket became")
            sub.add_argument("--limit", type=int, metavar="N",
                             help="only the N invoices of the range sold last (by the till's "
                                  "sale time; the count, total and gap check still cover all "
                                  "of them)")
    demo_parser = areas.add_parser("demo", help="a relay and three tills through an outage, "
                                   "end to end",
                                   description=demo_module.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    demo_module.add_arguments(demo_parser)
    demo_parser.set_defaults(func=demo_module.demo)
    peer = areas.add_parser("peer", help="a till's own store", epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = peer.add_subparsers(dest="verb", required=True)

    def verb(name: str, func: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
             help_text: str, *, json_flag: bool = True) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("dir", metavar="DIR", help="the store's directory")
        if json_flag:
            sub.add_argument("--json", action="store_true", help="print JSON")
        sub.set_defaults(func=func)
        return sub

    sub = verb("init", peer_init, "create a store: device key, database, empty master data")
    sub.add_argument("--name", required=True, help="device name, e.g. 'Till 3'")
    sub.add_argument("--series", help="provisional ticket series (default: from the name)")
    sub.add_argument("--store", help="store id when not enrolling (default: a new UUID)")
    sub.add_argument("--relay", metavar="URL", help="relay to enroll with, ws://host:port")
    sub.add_argument("--code", help="one-time code from `tillsync relay enroll`")
    sub.add_argument("--tls-pin", metavar="SHA256",
                     help="wss:// relay: accept exactly the TLS certificate with this SHA-256 "
                     "fingerprint (a self-signed relay); default: the system's trust store")
    sub.add_argument("--tls-ca", metavar="FILE", type=os.path.abspath,  # for the daemon
                     help="wss:// relay: trust the CA certificates in this PEM file")

    sub = verb("sync", peer_sync, "one sync round with the relay: push, receipts, document "
               "(the daemon that keeps syncing is `peer run`)")
    sub.add_argument("--once", action="store_true",
                     help="one round and exit: what `peer sync` always does (kept for scripts)")
    sub.add_argument("--relay", metavar="URL", help="relay url (default: the enrolled one)")

    sub = verb("run", peer_run, "daemon: sync with the other tills on the LAN and with the "
               "relay; serve the local API", json_flag=False)
    sub.add_argument("--relay", metavar="URL", help="relay url (default: the enrolled one)")
    sub.add_argument("--interval", type=float, default=5.0,
                     help="seconds between relay rounds when nothing new is stored (new "
                          "entries go up at once); failures back off up to 10 s")
    sub.add_argument("--lan-port", type=_port, default=LAN_PORT, metavar="P",
                     help=f"port to listen on for the other tills (default {LAN_PORT}; "
                          "0 picks a free one)")
    sub.add_argument("--lan-host", default="0.0.0.0", metavar="H",
                     help="address to listen on (default all)")
    sub.add_argument("--lan-handshake-timeout", type=_above_zero(float), default=HANDSHAKE_TIMEOUT,
                     metavar="SECONDS", help="close a LAN connection that has not completed "
                     f"the handshake this long after opening (default {HANDSHAKE_TIMEOUT:g}; "
                     f"close code {CLOSE_HANDSHAKE_TIMEOUT})")
    sub.add_argument("--peer", action="append", default=[], metavar="URL",
                     help="another till to link with, ws://HOST:PORT/ (repeat; for networks "
                          "without multicast)")
    sub.add_argument("--no-mdns", action="store_true",
                     help="do not announce or look for tills by mDNS")
    sub.add_argument("--no-lan", action="store_true",
                     help="relay only: no LAN listener, no local API (the store is opened "
                          "per round)")
    sub.add_argument("--no-relay", action="store_true",
                     help="LAN only: never contact the relay")
    _log_format_flag(sub)
    sub.add_argument("--shutdown-grace", type=float, default=SHUTDOWN_GRACE, metavar="SECONDS",
                     help=SHUTDOWN_HELP)
    api_cli.add_run_arguments(sub, _port)
    api_cli.add_token_verb(verb("token", api_cli.peer_token, "print the token of the till's "
                                "HTTP API, or issue, revoke and list tokens for other "
                                "machines"))

    sub = verb("receipts", peer_receipts, "the relay's answers: ticket -> invoice number, "
               "waiting and rejected entries")
    sub.add_argument("--mine", action="store_true", help="only this device's entries")

    sub = verb("put", peer_put, "create or update a master-data record (fields merge)")
    sub.add_argument("collection", choices=COLLECTIONS)
    sub.add_argument("id", metavar="ID", help="record id (UUID recommended; settings: 'store')")
    sub.add_argument("--body", required=True, help="fields as JSON; null removes a field")

    sub = verb("get", peer_get, "print master data as JSON", json_flag=False)
    sub.add_argument("collection", choices=COLLECTIONS)
    sub.add_argument("id", metavar="ID", nargs="?", help="one record (default: all)")

    sub = verb("record", peer_record, "append one entry to the log")
    sub.add_argument("kind", metavar="KIND", help=f"one of: {', '.join(ENTRY_KINDS)}")
    sub.add_argument("--body", required=True, help="the entry body as JSON")
    sub.add_argument("--client-id", help="idempotency key (UUID v4); a retry returns the "
                                         "stored entry instead of a duplicate")

    verb("stock", peer_stock, "stock of tracked products, suggested price of volatile ones")
    verb("status", peer_status, "device, pending entries, open shifts and expected cash")
    verb("verify", peer_verify, "re-check every chain link and signature; exit 1 if broken")
    verb("balances", peer_balances, "what each customer owes")
    add_peer_enroll(verb, peer_init)
    sub = verb("log", peer_log, "list log entries")
    sub.add_argument("--kind", help="only this kind")
    backup.add_peer_verb(verb)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.func is relay_serve and args.workers > 1:
            return relay_serve_workers(args)
        code: int = asyncio.run(args.func(args))
        return code
    except (CliError, OpsError) as exc:
        print(f"tillsync: {exc}", file=sys.stderr)
        return exc.code
    except (InvalidInput, SchemaViolation, UnknownKind, UnknownCollection) as exc:
        writes = args.func in (peer_put, peer_record, peer_init)
        print(f"tillsync: {exc}" + ("\nnothing was stored." if writes else ""),
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreError as exc:
        print(f"tillsync: {exc}", file=sys.stderr)
        return EXIT_STORE
    except client.SyncError as exc:
        print(f"tillsync: {exc}", file=sys.stderr)
        return EXIT_RELAY
    except TillsyncError as exc:
        print(f"tillsync: {exc}", file=sys.stderr)
        return EXIT_STORE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tillsync ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
