"""The ``tillsync`` command line: ``main``, the parser, and the ``peer`` verbs.  The
``relay`` verbs are in ``tools/cli_relay.py``, ``report`` in ``tools/cli_report.py``,
``peer enroll`` and the relay's start checks in ``tools/cli_ops.py``, and what they all
share (exit codes, argument types, output) in ``tools/cli_common.py``.

Every verb that reports has ``--json``.  Exit status: 0 done, 1 a check failed
(``peer verify``), 2 bad input (nothing was stored), 3 the store cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tillsync.peer import client, logfmt
from tillsync.peer.chainstop import describe as describe_stop
from tillsync.peer.chainstop import stopped_at
from tillsync.peer.enrollment import enroll_existing, holds_store
from tillsync.peer.errors import InvalidInput, StoreCorrupt, StoreError, TillsyncError
from tillsync.peer.http.auth import owner_token
from tillsync.peer.lan.node import LAN_PORT, Node, NodeConfig, read_status
from tillsync.peer.shutdown import SHUTDOWN_GRACE, SHUTDOWN_HELP, Shutdown, run_until_signal
from tillsync.peer.store import Till, is_locked
from tillsync.peer.sync.deadlines import (
    CLOSE_HANDSHAKE_TIMEOUT,
    HANDSHAKE_TIMEOUT,
)
from tillsync.schemas import (
    COLLECTIONS,
    ENTRY_KINDS,
    SchemaViolation,
    UnknownCollection,
    UnknownKind,
)
from tillsync.tools import api_cli, backup, cli_files
from tillsync.tools import demo as demo_module
from tillsync.tools.cli_common import (
    EPILOG,
    EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_RELAY,
    EXIT_STORE,
    LOCK_WAIT,
    CliError,
    above_zero,
    add_log_format_flag,
    emit,
    port_arg,
    read_body,
    relay_url,
    shutdown_deadlines,
)
from tillsync.tools.cli_counter import add_peer_delete
from tillsync.tools.cli_invoice import add_peer_invoice
from tillsync.tools.cli_ops import OpsError, add_peer_enroll
from tillsync.tools.cli_relay import add_relay, relay_serve, relay_serve_workers
from tillsync.tools.cli_report import add_report

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
    emit(args, public, lambda: (
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
    body = read_body(args.body)
    if not isinstance(body, dict):
        raise CliError("--body must be a JSON object", EXIT_BAD_INPUT)
    if await _daemon_serves(args.dir):
        record = (await _through_daemon(args.dir, "PUT", f"/api/master/{args.collection}/"
                                        f"{quote(args.id, safe='')}", body))["record"]
    else:
        async with await Till.open(args.dir, wait=LOCK_WAIT) as till:
            record = await till.put(args.collection, args.id, body)
    emit(args, {"id": args.id, **record}, lambda: json.dumps({"id": args.id, **record},
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
    body = read_body(args.body)
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
            what += ("; official invoice number: assigned at sync (reprint: tillsync peer "
                     f"invoice {shlex.quote(str(args.dir))} {data['ticket']})")
        return f"recorded {what}"

    emit(args, data, human)
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

    emit(args, rows, human)
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

    emit(args, status, human)
    return EXIT_OK


async def peer_verify(args: argparse.Namespace) -> int:
    try:
        till = await Till.open(args.dir, readonly=True)
    except StoreCorrupt as exc:  # damage found before the chain walk: still a failed check
        damage = str(exc)
        emit(args, {"ok": False, "first_break": None, "problems": [damage]},
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

    emit(args, data, human)
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED


async def peer_sync(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, wait=10.0) as till:
        report = await client.sync_once(till, args.relay)
    data = vars(report)
    emit(args, data, lambda: (
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
    deadlines = shutdown_deadlines(args)
    if args.no_lan and args.no_api:  # nothing to serve: the store is opened per round
        await run_until_signal(f"the daemon of {args.dir}", deadlines, client.run(
            Path(args.dir), url=args.relay, interval=args.interval))
        return EXIT_OK
    config = NodeConfig(Path(args.dir), relay=args.relay, lan_host=args.lan_host,
                        lan_port=None if args.no_lan else args.lan_port,
                        peers=[] if args.no_lan else args.peer,
                        mdns=not (args.no_mdns or args.no_lan),
                        interval=args.interval, relay_enabled=not args.no_relay,
                        handshake_timeout=args.lan_handshake_timeout,
                        api_host=args.api_host, api_port=None if args.no_api else args.api_port,
                        automerge_limits=api_cli.automerge_limits(args),
                        deadlines=deadlines)
    node = Node(config)
    shutdown = Shutdown(f"the daemon of {args.dir}", node.stop, deadlines)
    shutdown.install(asyncio.get_running_loop())
    await node.run()
    shutdown.done()
    return EXIT_OK


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

    emit(args, rows, human)
    return EXIT_OK


async def peer_log(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, readonly=True) as till:
        entries = await till.entries(kind=args.kind)
    data = [e.to_json() for e in entries]
    emit(args, data, lambda: "\n".join(
        f"{e.seq:>6} {e.client_created_at} {e.kind:<16} {e.ticket or '':<16} {e.client_id}"
        for e in entries
    ) or "the log is empty")
    return EXIT_OK


async def peer_balances(args: argparse.Namespace) -> int:
    async with await Till.open(args.dir, readonly=True) as till:
        balances = await till.balances()
    emit(args, balances, lambda: "\n".join(f"{c:<36} {b:>12}" for c, b in balances.items())
          or "no customer owes anything")
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tillsync",
        description="Offline-first sync store for point-of-sale tills.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    areas = parser.add_subparsers(dest="area", required=True,
                                  metavar="{peer,relay,report,demo}")
    add_relay(areas)
    add_report(areas)
    demo_parser = areas.add_parser("demo", help="a relay and three tills through an outage, "
                                   "end to end",
                                   # the docstring's reST literals, as a terminal shows code
                                   description=(demo_module.__doc__ or "").replace("``", "`"),
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
    sub.add_argument("--relay", metavar="URL", type=relay_url,
                     help="relay to enroll with, ws://host:port")
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
    sub.add_argument("--relay", metavar="URL", type=relay_url,
                     help="relay url (default: the enrolled one)")

    sub = verb("run", peer_run, "daemon: sync with the other tills on the LAN and with the "
               "relay; serve the HTTP API", json_flag=False)
    sub.add_argument("--relay", metavar="URL", type=relay_url,
                     help="relay url (default: the enrolled one)")
    sub.add_argument("--interval", type=float, default=5.0,
                     help="seconds between relay rounds when nothing new is stored (new "
                          "entries go up at once); failures back off up to 10 s")
    sub.add_argument("--lan-port", type=port_arg, default=LAN_PORT, metavar="P",
                     help=f"port to listen on for the other tills (default {LAN_PORT}; "
                          "0 picks a free one)")
    sub.add_argument("--lan-host", default="0.0.0.0", metavar="H",
                     help="address to listen on (default all)")
    sub.add_argument("--lan-handshake-timeout", type=above_zero(float), default=HANDSHAKE_TIMEOUT,
                     metavar="SECONDS", help="close a LAN connection that has not completed "
                     f"the handshake this long after opening (default {HANDSHAKE_TIMEOUT:g}; "
                     f"close code {CLOSE_HANDSHAKE_TIMEOUT})")
    sub.add_argument("--peer", action="append", default=[], metavar="URL",
                     help="another till to link with, ws://HOST:PORT/ (repeat; for networks "
                          "without multicast)")
    sub.add_argument("--no-mdns", action="store_true",
                     help="do not announce or look for tills by mDNS")
    sub.add_argument("--no-lan", action="store_true",
                     help="relay only: no LAN listener (the HTTP API is still served; "
                          "with --no-api too, the store is opened per round)")
    sub.add_argument("--no-relay", action="store_true",
                     help="LAN only: never contact the relay")
    add_log_format_flag(sub)
    sub.add_argument("--shutdown-grace", type=float, default=SHUTDOWN_GRACE, metavar="SECONDS",
                     help=SHUTDOWN_HELP)
    api_cli.add_run_arguments(sub, port_arg)
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
    add_peer_delete(verb)

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
    add_peer_invoice(verb)
    sub = verb("log", peer_log, "list log entries")
    sub.add_argument("--kind", choices=ENTRY_KINDS, metavar="KIND",
                     help=f"only this kind: {', '.join(ENTRY_KINDS)}")
    backup.add_peer_verb(verb)
    cli_files.add_peer_verbs(verbs, verb)
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
