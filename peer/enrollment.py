"""Enrolling a store that exists already: a till that sold on its own joins a relay.

``peer enroll DIR --relay URL --code CODE`` (and ``peer init`` on a directory that holds a
store) enrolls the till under the device id and key it has signed its log with, so every
entry it holds stays valid as it is: the log, its chain and signatures, its tickets and
its master data are kept, and what the relay lacks goes up at the next sync.  Only the
store's identity changes: it becomes the relay's store named by the code (a store of its
own had a random id that no other device knew), with the store key pinned and the
device's certificate kept, as ``peer init --relay`` would have made them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tillsync.peer.client import enroll_checked
from tillsync.peer.errors import StoreExists
from tillsync.peer.store import DB_FILE, Till
from tillsync.peer.tls import normalise_pin

ENROLL_WAIT = 10.0  # seconds to wait for a `peer run` holding the store


async def enroll_existing(path: Path, *, url: str, code: str, tls_pin: str | None = None,
                          tls_ca: str | None = None) -> dict[str, str]:
    """Enroll the store in ``path`` at the relay at ``url`` with a one-time ``code``;
    returns its new identity.  Refused (nothing changed) if it is enrolled already."""
    if tls_pin:
        tls_pin = normalise_pin(tls_pin)
    till = await Till.open(path, wait=ENROLL_WAIT)
    try:
        if till.relay_key is not None:
            raise StoreExists(
                f"{path} is enrolled already (store {till.store_id} at "
                f"{till.meta.get('relay_url')}); nothing was changed (a till the relay "
                "no longer numbers: add --new-device)")
        enrolled = await enroll_checked(url, code, till.name, till.key, till.device_id,
                                        tls_pin=tls_pin, tls_ca=tls_ca)
        meta = {"store_id": enrolled.store, "relay_url": url,
                "relay_key": enrolled.relay_key.hex()}
        meta.update({k: v for k, v in (("relay_tls_pin", tls_pin),
                                       ("relay_tls_ca", tls_ca)) if v})
        cert = (till.device_id, till.public_key, till.name, enrolled.cert)

        async def op(batch: Any) -> None:
            batch.meta.update(meta)
            batch.certs.append(cert)

        # The store's own writer, so this lands in one transaction like any other write.
        await till._submit(op)
        info = {"device_id": till.device_id, "name": till.name, "series": till.series,
                "public_key": till.public_key.hex(), **meta}
    finally:
        await till.close()
    return info


def holds_store(path: Path) -> bool:
    """True if ``path`` holds a till's store (``peer init`` then enrolls it instead)."""
    return (path / DB_FILE).exists()
