"""The relay's PostgreSQL schema: its migrations, applied in order, once each, one
migrator at a time, with what each computes from the entries already held (its fill).
``relay.storage.postgres`` is the backend that runs on it."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from tillsync.relay import counter_checks, tallies

log = logging.getLogger("tillsync.relay.postgres")

# Each migration is applied once, in order, in one transaction, and recorded in
# schema_version.  Never edit one that has shipped: add the next.
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "the relay's tables", """
CREATE TABLE devices (
    store text NOT NULL, device_id text NOT NULL, name text NOT NULL,
    public_key bytea NOT NULL, role text NOT NULL, enrolled_at text NOT NULL,
    revoked_at text, last_seen text,
    PRIMARY KEY (store, device_id)
);
CREATE TABLE enroll_codes (
    code_hash bytea PRIMARY KEY, store text NOT NULL, name text NOT NULL, role text NOT NULL,
    expires_at text NOT NULL, used_at text, used_by text
);
CREATE TABLE entries (
    store text NOT NULL, device_id text NOT NULL, seq bigint NOT NULL,
    client_id text NOT NULL, prev bytea NOT NULL, kind text NOT NULL,
    client_created_at text NOT NULL, ticket text, body bytea NOT NULL, sig bytea NOT NULL,
    hash bytea NOT NULL, received_at text NOT NULL,
    PRIMARY KEY (store, device_id, seq),
    UNIQUE (store, client_id)
);
CREATE FUNCTION tillsync_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$;
CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION tillsync_append_only();
CREATE TABLE receipts (
    store text NOT NULL, server_seq bigint NOT NULL, client_id text NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (store, server_seq)
);
CREATE TRIGGER receipts_append_only BEFORE UPDATE OR DELETE ON receipts
    FOR EACH ROW EXECUTE FUNCTION tillsync_append_only();
CREATE TABLE stream_heads (store text PRIMARY KEY, seq bigint NOT NULL, hash bytea NOT NULL);
CREATE TABLE counters (
    store text NOT NULL, name text NOT NULL, value bigint NOT NULL,
    PRIMARY KEY (store, name)
);
CREATE TABLE invoices (
    store text NOT NULL, series text NOT NULL, invoice_no bigint NOT NULL,
    client_id text NOT NULL, device_id text NOT NULL, ticket text, total bigint NOT NULL,
    client_created_at text NOT NULL, issued_at text NOT NULL,
    PRIMARY KEY (store, series, invoice_no),
    UNIQUE (store, client_id)  -- a sale is numbered once (migration 6 changes this)
);
CREATE TABLE mappings (
    store text NOT NULL, kind text NOT NULL, client_id text NOT NULL, server_id text NOT NULL,
    PRIMARY KEY (store, kind, client_id)
);
CREATE TABLE waiting (
    store text NOT NULL, client_id text NOT NULL, waiting_for text NOT NULL,
    PRIMARY KEY (store, waiting_for, client_id)
);
CREATE TABLE stock (
    store text NOT NULL, product_id text NOT NULL, qty bigint NOT NULL,
    PRIMARY KEY (store, product_id)
);
CREATE TABLE prices (
    store text NOT NULL, product_id text NOT NULL, price bigint NOT NULL,
    PRIMARY KEY (store, product_id)
);
CREATE TABLE alerts (
    id bigserial PRIMARY KEY, store text NOT NULL, client_id text NOT NULL,
    product_id text NOT NULL, qty bigint NOT NULL, reorder_level bigint NOT NULL, at text NOT NULL
);
CREATE TABLE rejected (
    id bigserial PRIMARY KEY, store text NOT NULL, client_id text NOT NULL, device_id text NOT NULL,
    seq bigint NOT NULL, code text NOT NULL, message text NOT NULL, entry bytea NOT NULL,
    at text NOT NULL
);
CREATE INDEX rejected_by_client ON rejected (store, client_id);
CREATE TABLE doc_snapshot (store text PRIMARY KEY, data bytea NOT NULL,
                           upto bigint NOT NULL DEFAULT 0);
CREATE TABLE doc_changes (id bigserial PRIMARY KEY, store text NOT NULL, data bytea NOT NULL);
CREATE INDEX doc_changes_by_store ON doc_changes (store, id);
"""),
    (2, "revocations: the seq up to which a revoked device's entries stay valid", """
ALTER TABLE devices ADD COLUMN revoked_upto bigint;
"""),
    (3, "admin tokens of the reporting API (their SHA-256 only)", """
CREATE TABLE admin_tokens (token_hash bytea PRIMARY KEY, store text NOT NULL,
                           created_at text NOT NULL);
"""),
    (4, "running totals of the reports, filled from the sales already held; the invoice "
        "register append-only; a suggested price is the latest sale's by its time",
     tallies.SCHEMA + """
CREATE TRIGGER invoices_append_only BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION tillsync_append_only();
ALTER TABLE prices ADD COLUMN at text NOT NULL DEFAULT '';
"""),
    (5, "each store's signing key, sealed under the relay's key; stores made before "
        "keep the relay's own key", """
CREATE TABLE IF NOT EXISTS store_keys (store text PRIMARY KEY, public_key bytea,
                                      sealed bytea, created_at text NOT NULL);
INSERT INTO store_keys (store, created_at)
    SELECT store, 'before store keys' FROM devices UNION SELECT store, 'before store keys'
    FROM enroll_codes
ON CONFLICT DO NOTHING;
"""),
    # A sale is numbered once, whatever the code above does: one invoice per sale's place
    # in its device's chain, which the entries table holds once each with one client_id.
    # The UNIQUE (store, client_id) it replaces was an index on random UUIDs that each
    # sale wrote into at a random page.  An invoice without its entry (there is none)
    # would fail SET NOT NULL and leave the database as it was.
    (6, "the invoice register is unique by (store, device_id, seq), not by client_id", """
ALTER TABLE invoices ADD COLUMN seq bigint;
ALTER TABLE invoices DISABLE TRIGGER invoices_append_only;
UPDATE invoices i SET seq = e.seq FROM entries e
    WHERE e.store = i.store AND e.client_id = i.client_id AND e.device_id = i.device_id;
ALTER TABLE invoices ENABLE TRIGGER invoices_append_only;
ALTER TABLE invoices ALTER COLUMN seq SET NOT NULL;
ALTER TABLE invoices ADD CONSTRAINT invoices_store_device_id_seq_key
    UNIQUE (store, device_id, seq);
ALTER TABLE invoices DROP CONSTRAINT invoices_store_client_id_key;
"""),
    (7, "each rejected entry records the device whose link carried it (rows kept from "
        "before: not known)", """
ALTER TABLE rejected ADD COLUMN sent_by text;
"""),
    (8, "running totals of refunds, expenses and cash movements, and the listed items of "
        "the reports (total mismatches, held sales, drafts); every total filled again from "
        "the entries held", tallies.REPORTS_SCHEMA),
    (9, "customers' balances (counters balance:<id>) set from the entries held", ""),
    (10, "an index of the invoice register by ticket (finding a ticket's invoice read "
         "every invoice of the store)", tallies.INVOICES_BY_TICKET),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

_MIGRATION_LOCK = 0x7469_6C6C  # pg_advisory_xact_lock key: one migrator at a time


def _dollars(sql: str) -> str:
    """``?`` placeholders (the SQL both backends share) as PostgreSQL's ``$1, $2, ...``."""
    numbered = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(numbered)}", sql)


# What a migration computes from the entries held, after its SQL: the running totals
# (migration 4's, and migration 8's of refunds, expenses, cash movements and listed items)
# and customers' balances (migration 9).
_FILLS: dict[int, Callable[[counter_checks.Read, counter_checks.Write], Awaitable[object]]] = {
    8: tallies.rebuild, 9: counter_checks.rebuild_balances}


async def _fill(conn: asyncpg.Connection, version: int) -> None:
    """Run the fill of migration ``version``, if it has one, on ``conn``."""
    async def read(sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await conn.fetch(_dollars(sql), *args)]

    async def write(sql: str, rows: list[tuple[Any, ...]]) -> None:
        await conn.executemany(_dollars(sql), rows)

    if version in _FILLS:
        await _FILLS[version](read, write)


async def schema_version(conn: asyncpg.Connection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))


async def migrate_schema(conn: asyncpg.Connection) -> int:
    """Apply the migrations this database lacks, each in its own transaction, one
    migrator at a time (relay processes starting together wait for each other).
    Returns the schema version reached; never downgrades."""
    for version, what, sql in MIGRATIONS:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            if await schema_version(conn) >= version:
                continue
            if sql:
                await conn.execute(sql)
            await _fill(conn, version)
            await conn.execute("INSERT INTO schema_version (version, description) "
                               "VALUES ($1, $2)", version, what)
            log.info("relay schema migrated to version %d (%s)", version, what)
    return await schema_version(conn)
