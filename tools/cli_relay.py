"""``tillsync relay ...``: serve (one process, or several on PostgreSQL), migrate,
enroll, token, revoke."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import timedelta
from pathlib import Path

from tillsync.peer import logfmt
from tillsync.peer.shutdown import SHUTDOWN_GRACE, SHUTDOWN_HELP, Shutdown
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
from tillsync.tools import backup, cli_files
from tillsync.tools.cli_common import (
    DB_HELP,
    EPILOG,
    EXIT_BAD_INPUT,
    EXIT_OK,
    CliError,
    above_zero,
    add_log_format_flag,
    emit,
    port_arg,
    shutdown_deadlines,
)
from tillsync.tools.cli_ops import before_serve, check_hours


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


def _existing_relay(args: argparse.Namespace) -> Path:
    """``--data`` of a verb that works on a relay already made (enroll, token, revoke):
    a folder that holds no relay key is a typo, not a new relay, whose codes or tokens no
    running relay would know."""
    data = Path(args.data)
    if not (data / "relay.key").is_file():
        raise CliError(f"no relay in {data} (it holds no relay.key): give the --data folder "
                       f"of `tillsync relay serve`, or make a relay there first with "
                       f"`tillsync relay migrate --data {data}`", EXIT_BAD_INPUT)
    return data


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
    grace = shutdown_deadlines(args).exit
    before_serve(args)
    _relay_logging(worker=True, log_format=args.log_format)
    asyncio.run(migrate(args.db, args.db_wait))  # once, before the workers start
    extra = ["--cert-days", str(args.cert_days), "--log-format", args.log_format,
             "--handshake-timeout", str(limits.handshake_timeout),
             "--idle-timeout", str(limits.idle_timeout),
             "--max-handshakes", str(limits.max_handshakes), *cli_files.worker_flags(args)]
    if args.tls_cert:
        extra += ["--tls-cert", args.tls_cert, "--tls-key", args.tls_key]
    if args.prepare_worker is not None:
        extra += ["--prepare-worker", str(args.prepare_worker)]
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
                         deadlines=shutdown_deadlines(args), files=cli_files.file_policy(args),
                         prepare_worker_min=args.prepare_worker)
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
    emit(args, {"schema_version": version, "database": where},
          lambda: f"relay schema at version {version} in {where}")
    return EXIT_OK


async def relay_enroll(args: argparse.Namespace) -> int:
    _check_db(args)
    check_hours(args.hours)
    relay = await Relay.open(_existing_relay(args), args.db)
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
    emit(args, data, lambda: code)
    return EXIT_OK


async def relay_token(args: argparse.Namespace) -> int:
    _check_db(args)
    relay = await Relay.open(_existing_relay(args), args.db)
    try:
        token = await relay.new_token(args.store)
    finally:
        await relay.close()
    emit(args, {"store": args.store, "token": token}, lambda: (
        f"{token}\n(reporting API token for store {args.store}; shown once, the relay keeps "
        f"only its hash: curl -H 'Authorization: Bearer {token}' "
        f"http://RELAY/api/v1/stores/{args.store}/reports/sales)"))
    return EXIT_OK


async def relay_revoke(args: argparse.Namespace) -> int:
    _check_db(args)
    relay = await Relay.open(_existing_relay(args), args.db)
    try:
        row = await relay.revoke(args.store, args.device)
    finally:
        await relay.close()
    emit(args, {"store": row.store, "device": row.device_id, "name": row.name,
                 "revoked_at": row.revoked_at, "upto": row.revoked_upto}, lambda: (
        f"revoked {row.name} ({row.device_id}) of store {row.store} at {row.revoked_at}: "
        f"its entries up to seq {row.revoked_upto} stay valid, later ones are refused; "
        "every till learns it on its next contact with the relay or a till that has"))
    return EXIT_OK


def add_relay(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``relay`` area and its verbs."""
    relay = areas.add_parser("relay", help="the relay server", epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    relay_verbs = relay.add_subparsers(dest="verb", required=True)
    sub = relay_verbs.add_parser("serve", help="serve devices over websockets",
                                 description="serve devices over websockets")
    sub.add_argument("--data", required=True, metavar="DIR", help="the relay's data folder")
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                     "127.0.0.1: this machine only; 0.0.0.0 for tills on other machines)")
    sub.add_argument("--port", type=port_arg, default=8765,
                     help="port (default 8765; 0 picks a free one)")
    sub.add_argument("--db", metavar="URL", help=DB_HELP)
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
    add_log_format_flag(sub)
    sub.add_argument("--handshake-timeout", type=above_zero(float), default=HANDSHAKE_TIMEOUT,
                     metavar="SECONDS", help="close a connection that has not logged in "
                     f"this long after opening (default {HANDSHAKE_TIMEOUT:g}; close code "
                     f"{CLOSE_HANDSHAKE_TIMEOUT})")
    sub.add_argument("--idle-timeout", type=above_zero(float), default=IDLE_TIMEOUT,
                     metavar="SECONDS",
                     help="close a logged-in link on which no frame has passed either way "
                     f"this long; websocket pings do not count (default {IDLE_TIMEOUT:g}; "
                     f"close code {CLOSE_IDLE})")
    sub.add_argument("--max-handshakes", type=above_zero(int), default=MAX_HANDSHAKES, metavar="N",
                     help="connections of one relay process that may be logging in at once; "
                     f"more are closed at once with code {CLOSE_BUSY} (default "
                     f"{MAX_HANDSHAKES})")
    sub.add_argument("--shutdown-grace", type=float, default=SHUTDOWN_GRACE, metavar="SECONDS",
                     help=SHUTDOWN_HELP)
    sub.add_argument("--prepare-worker", type=above_zero(int), metavar="N", help="prepare "
                     "batches of N entries or more (hashes, schema checks) in a worker process "
                     "(default: all on the event loop, the least CPU a sale)")
    sub.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    sub.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)
    cli_files.add_relay_serve_flags(sub)
    sub.set_defaults(func=relay_serve)
    sub = relay_verbs.add_parser("migrate", help="create or upgrade the relay's schema",
                                 description="create or upgrade the relay's schema (serve "
                                 "does it too on start)")
    sub.add_argument("--data", metavar="DIR", help="the relay's data folder (SQLite)")
    sub.add_argument("--db", metavar="URL", help=DB_HELP)
    sub.add_argument("--db-wait", type=float, default=60.0, metavar="SECONDS",
                     help="how long to keep retrying an unreachable database (default 60)")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(func=relay_migrate)
    sub = relay_verbs.add_parser("enroll", help="make a one-time code to enroll a device",
                                 description="make a one-time code to enroll a device")
    sub.add_argument("--data", required=True, metavar="DIR", help="the relay's data folder")
    sub.add_argument("--db", metavar="URL", help=DB_HELP)
    sub.add_argument("--store", required=True, help="store id (created on first use)")
    sub.add_argument("--name", required=True, help="the device's name")
    sub.add_argument("--role", default="till", choices=["till", "backoffice", "admin"],
                     help="till (default: sells, may not change prices or settings), "
                     "backoffice or admin")
    sub.add_argument("--hours", type=float, default=24.0, help="validity (default 24)")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(func=relay_enroll)
    sub = relay_verbs.add_parser("token", help="make a token of the reporting API",
                                 description="make a token of the relay's reporting API "
                                 "for one store (GET /api/v1/stores/STORE/reports/NAME)")
    sub.add_argument("--data", required=True, metavar="DIR", help="the relay's data folder")
    sub.add_argument("--db", metavar="URL", help=DB_HELP)
    sub.add_argument("--store", required=True, help="store id")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(func=relay_token)
    sub = relay_verbs.add_parser("revoke", help="cut a device off (a stolen till)",
                                 description="revoke a device: it can no longer connect, and "
                                 "its entries after the last one the relay holds are refused "
                                 "by the relay and, once they learn it, by every till")
    sub.add_argument("--data", required=True, metavar="DIR", help="the relay's data folder")
    sub.add_argument("--db", metavar="URL", help=DB_HELP)
    sub.add_argument("--store", required=True, help="store id")
    sub.add_argument("--device", required=True, metavar="ID_OR_NAME",
                     help="the device's id, or its name if unique in the store")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(func=relay_revoke)
    backup.add_relay_verb(relay_verbs)
