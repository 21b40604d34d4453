"""Tickets and their final invoices: JSON for screens, fixed-width text for printers.

A sale is printed at once on its provisional ticket (``T1-000042``); the relay gives it
its official, gapless invoice number when it ingests it, and the receipt that says so
comes back at the next sync (from the relay or a LAN peer).  Until then the invoice says
the number is still to come.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tillsync.peer.log import Entry
from tillsync.peer.store import Till
from tillsync.peer.totals import line_amount, sale_total

PENDING_NOTE = "official invoice number assigned at sync"
WIDTH = 42  # characters per line of an 80 mm receipt printer's standard font


def official_number(receipt: Mapping[str, Any] | None) -> str | None:
    if receipt is None or "invoice_no" not in receipt:
        return None
    return f"{receipt['series']}-{int(receipt['invoice_no']):06d}"


def receipt_json(receipt: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A receipt as JSON (the stream's hashes and signature left out)."""
    if receipt is None:
        return None
    return {k: v for k, v in receipt.items() if not isinstance(v, bytes)}


def ticket_row(entry: Entry, receipt: Mapping[str, Any] | None) -> dict[str, Any]:
    """One line of the ticket history: ticket -> invoice."""
    return {"ticket": entry.ticket, "client_id": entry.client_id,
            "device_id": entry.device_id, "created_at": entry.client_created_at,
            "total": sale_total(entry.body["lines"]),
            "status": receipt["status"] if receipt else "pending",
            "invoice": official_number(receipt)}


def invoice(entry: Entry, receipt: Mapping[str, Any] | None, till: Till) -> dict[str, Any]:
    """The printable final invoice of a sale."""
    settings = till.get("settings", "store") or {}
    lines = []
    for line in entry.body["lines"]:
        product = till.get("products", line["product_id"]) or {}
        lines.append({"product_id": line["product_id"],
                      "name": product.get("name", line["product_id"]),
                      "qty": str(line["qty"]), "unit_price": line["unit_price"],
                      "discount": line.get("discount", 0), "amount": line_amount(line)})
    number = official_number(receipt)
    total = int(receipt["total"]) if receipt and "total" in receipt \
        else sale_total(entry.body["lines"])
    return {
        "ticket": entry.ticket, "client_id": entry.client_id,
        "device_id": entry.device_id, "till": till.device_name(entry.device_id),
        "created_at": entry.client_created_at,
        "status": receipt["status"] if receipt else "pending",
        "invoice": number, "official": number is not None,
        "note": None if number else PENDING_NOTE,
        "header": {"store_name": settings.get("store_name", ""),
                   "text": settings.get("receipt_header", "")},
        "footer": settings.get("receipt_footer", ""),
        "currency": settings.get("currency", ""),
        "lines": lines,
        "total": total,
        "payments": [{"method": p["method"], "amount": p["amount"]}
                     for p in entry.body["payments"]],
        "customer_id": entry.body.get("customer_id"),
    }


def _money(amount: int) -> str:
    sign = "-" if amount < 0 else ""
    return f"{sign}{abs(amount) // 100}.{abs(amount) % 100:02d}"


def _pair(left: str, right: str) -> str:
    room = WIDTH - len(right) - 1
    return f"{left[:room]:<{room}} {right}"


def render_text(doc: Mapping[str, Any]) -> str:
    """The invoice for a receipt printer: ``WIDTH`` characters a line, plain ASCII."""
    out: list[str] = []
    for text in (doc["header"]["store_name"], doc["header"]["text"]):
        out += [part.center(WIDTH).rstrip() for part in text.splitlines() if part]
    out.append("=" * WIDTH)
    out.append(_pair("Invoice", doc["invoice"] or "(pending)"))
    if doc["note"]:
        out.append(doc["note"][:WIDTH])
    out.append(_pair("Ticket", doc["ticket"] or ""))
    out.append(_pair("Date", doc["created_at"][:19].replace("T", " ")))
    out.append("-" * WIDTH)
    for line in doc["lines"]:
        out.append(str(line["name"])[:WIDTH])
        detail = f"  {line['qty']} x {_money(line['unit_price'])}"
        if line["discount"]:
            detail += f" -{_money(line['discount'])}"
        out.append(_pair(detail, _money(line["amount"])))
    out.append("-" * WIDTH)
    out.append(_pair(f"TOTAL {doc['currency']}".rstrip(), _money(doc["total"])))
    for payment in doc["payments"]:
        out.append(_pair(f"  {payment['method']}", _money(payment["amount"])))
    if doc["footer"]:
        out.append("=" * WIDTH)
        out += [part.center(WIDTH).rstrip() for part in doc["footer"].splitlines()]
    return "\n".join(out) + "\n"
