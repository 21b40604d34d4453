"""Each store's signing key.

The store key signs what devices of one store trust: the relay's side of the handshake,
device certificates, revocations and receipts (so invoice numbers).  A till pins it when
it enrolls and checks every other till's certificate against it on the LAN.

A store's key is made with the store (its first enrollment code), at random, and kept
in the relay's database sealed: AES-256-GCM under a key derived (HKDF-SHA256) from the
relay's own key file, with the store id as associated data.  So the database alone (a
backup, a replica, a PostgreSQL administrator) cannot sign for any store, a sealed key
copied to another store's row does not open, and one store's key can be handed to
another relay without the others.  Every relay process on one database needs the same
``relay.key`` (it already does: see the README).

Stores made before per-store keys (relay schema 5) keep the relay's own key as their
store key, marked by a row without a sealed key: their tills pinned that key and keep
working.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tillsync.peer.identity import DeviceKey

SEAL_INFO = b"tillsync/store-key-seal/v1"
NONCE = 12


class StoreKeyError(RuntimeError):
    """A sealed store key that does not open with this relay's key."""


def _aead(relay_key: DeviceKey) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=SEAL_INFO).derive(relay_key.seed())
    return AESGCM(derived)


def seal(relay_key: DeviceKey, store: str, key: DeviceKey) -> bytes:
    """``key``'s seed, encrypted for the relay and bound to ``store``."""
    nonce = os.urandom(NONCE)
    return nonce + _aead(relay_key).encrypt(nonce, key.seed(), store.encode())


def unseal(relay_key: DeviceKey, store: str, sealed: bytes, public_key: bytes) -> DeviceKey:
    """The store key sealed by ``seal``; raises ``StoreKeyError`` if it does not open
    with this relay's key or is not the key whose public half the database holds."""
    try:
        seed = _aead(relay_key).decrypt(sealed[:NONCE], sealed[NONCE:], store.encode())
    except (InvalidTag, ValueError):
        raise StoreKeyError(
            f"the signing key of store {store!r} does not open with this relay's key "
            "(relay.key): every relay process on one database needs the same relay.key"
        ) from None
    key = DeviceKey.from_seed(seed)
    if key.public_bytes != public_key:
        raise StoreKeyError(f"the signing key of store {store!r} does not match its "
                            "public key in the database")
    return key
