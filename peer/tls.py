"""TLS for the link to the relay: ``wss://`` URLs, with the relay's certificate checked
against a pinned SHA-256 fingerprint, a CA file, or the system's trust store.

A pin suits a relay with a self-signed certificate: the till checks the exact
certificate (its DER bytes' SHA-256, what ``openssl x509 -fingerprint -sha256`` prints)
and nothing else, not even the host name.  Without a pin, the certificate must chain to
the CA file given, or else to the system's trust store, and name the host.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tillsync.peer.errors import InvalidInput


class PinMismatch(ssl.SSLError):
    """The relay's certificate is not the pinned one."""


def fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, as lowercase hex."""
    return hashlib.sha256(der).hexdigest()


def normalise_pin(pin: str) -> str:
    """A pin as given (hex, colons and case as you like) -> 64 lowercase hex digits."""
    digits = re.sub(r"[\s:]", "", pin).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digits):
        raise InvalidInput(f"--tls-pin {pin!r}: give the SHA-256 fingerprint of the relay's "
                           "certificate, 64 hex digits (colons allowed)")
    return digits


def client_context(url: str, *, pin: str | None = None, ca: str | None = None
                   ) -> ssl.SSLContext | None:
    """The SSL context for ``url`` (None for ``ws://``: plain websockets)."""
    if not url.startswith("wss://"):
        if pin or ca:
            raise InvalidInput(f"{url}: a TLS pin or CA file needs a wss:// relay URL")
        return None
    if pin:
        # The pin is the whole check: it is made on the certificate right after the
        # handshake, before a single frame is sent.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"--tls-ca {ca}: cannot read it as PEM certificates: {exc}") \
            from None


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """The relay's SSL context from a PEM certificate (chain) and its private key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"--tls-cert {cert} / --tls-key {key}: cannot load them: {exc}") \
            from None
    return context


@asynccontextmanager
async def relay_connection(url: str, *, pin: str | None = None, ca: str | None = None,
                           **kwargs: Any) -> AsyncIterator[ClientConnection]:
    """``websockets.connect`` to the relay, with TLS as configured for this till."""
    context = client_context(url, pin=pin, ca=ca)
    if context is not None:
        kwargs["ssl"] = context
    async with connect(url, **kwargs) as ws:
        if pin:
            ssl_object = ws.transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            if der is None or fingerprint(der) != normalise_pin(pin):
                raise PinMismatch(f"the relay's TLS certificate (SHA-256 "
                                  f"{fingerprint(der) if der else 'none'}) is not the pinned "
                                  "one; nothing was sent")
        yield ws
