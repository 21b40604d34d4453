"""Whether the relay has stopped this till's numbering.

The relay numbers a device's entries in the order of its chain.  An entry it refuses
for what it is rather than for what it says (its signature does not verify: a bit
flipped on the till's disk; it breaks or forks the chain; its client_id is taken; its
device was revoked) stops the chain there: no later entry of the device can be
numbered, however often it is sent.  Such a till must say so loudly (``peer sync``
fails naming the entry, ``peer status`` shows it, the daemon logs it every round)
rather than count "pending" entries that will never go up.  The way forward is
``peer enroll DIR --relay URL --code CODE --new-device`` (``peer.carry``).
"""

from __future__ import annotations

from typing import Any

from tillsync.peer.store import Till

# Rejection codes of the relay (relay/ingest.py) after which a device's chain cannot go on.
STOPPING = frozenset({"bad_signature", "broken_chain", "conflicting_entry",
                      "duplicate_client_id", "revoked", "unknown_device"})


async def stopped_at(till: Till, device_id: str | None = None) -> dict[str, Any] | None:
    """The first entry of ``device_id``'s log (default this till's) refused in a way that
    stops its numbering, with how many entries of the device wait behind it; or None."""
    device_id = device_id or till.device_id
    refused = [r for r in await till.receipts("rejected")
               if r.get("device_id") == device_id
               and r.get("error", {}).get("code") in STOPPING]
    if not refused:
        return None
    first = min(refused, key=lambda r: int(r.get("seq") or 0))
    seq = int(first.get("seq") or 0)
    return {"device_id": device_id, "seq": seq, "client_id": first["client_id"],
            "kind": first.get("kind"), "ticket": first.get("ticket"),
            "code": first["error"]["code"], "message": first["error"].get("message", ""),
            "behind": max(0, till.heads().get(device_id, seq) - seq)}


def describe(stop: dict[str, Any]) -> str:
    """One line for people: which entry, why, and what to do."""
    ticket = f", ticket {stop['ticket']}" if stop.get("ticket") else ""
    return (f"the relay refused entry seq {stop['seq']} ({stop['kind']}{ticket}, client_id "
            f"{stop['client_id']}): {stop['code']}: {stop['message']}; it and the "
            f"{stop['behind']} entries after it cannot get numbers: enroll this till again "
            "as a new device (`tillsync peer enroll DIR --relay URL --code CODE "
            "--new-device`), which records them again")
