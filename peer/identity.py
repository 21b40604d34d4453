"""Device identity: the till's Ed25519 key.

The private key is made once, on ``peer init``, written with owner-only permissions
(0600 in a 0700 directory) and never printed or sent anywhere.  Everything the till
records is signed with it; the public key travels with the device's certificate.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from tillsync.peer.errors import StoreCorrupt, StoreError

KEY_FILE = "device.key"


@dataclass(frozen=True)
class DeviceKey:
    """A device's signing key.  ``repr`` never shows the private part."""

    _private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> DeviceKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    @classmethod
    def from_seed(cls, seed: bytes) -> DeviceKey:
        """The key of a 32-byte Ed25519 seed (``seed()``)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def seed(self) -> bytes:
        """The 32 private bytes: only for sealing a key (relay/storekeys.py) or deriving
        one from it, never to be written out in the clear."""
        return self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())

    def __repr__(self) -> str:
        return f"DeviceKey(public={self.public_bytes.hex()})"

    def write(self, directory: Path, filename: str = KEY_FILE) -> Path:
        """Write the key to ``directory/device.key`` (0600); refuse to overwrite."""
        path = directory / filename
        pem = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # O_EXCL: an existing key is never replaced; 0o600 from the first byte on.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    @classmethod
    def read(cls, directory: Path, filename: str = KEY_FILE) -> DeviceKey:
        path = directory / filename
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{path} is missing: this store has no device key") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StoreError(
                f"{path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
                f"run `chmod 600 {path}` and check who copied it"
            )
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except ValueError as exc:
            raise StoreCorrupt(f"{path} is not a valid key file: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise StoreCorrupt(f"{path} does not hold an Ed25519 key")
        return cls(key)


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` is ``public_key``'s Ed25519 signature of ``data``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
