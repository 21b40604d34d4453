"""Device certificates and revocations: the relay's signed statements about devices.

A certificate binds a device id to its public key, its store, its name and its role.
The relay signs it with its key when the device enrolls (and again on every sync, so a
device enrolled before certificates existed gets one).  Tills keep their own and every
certificate they have seen; a till checks another till's certificate against the relay's
key it pinned at enrollment, so two tills can trust each other on the LAN with no
internet.

On the wire and on disk a certificate is the msgpack array ``[body, sig]`` where
``body`` is the canonical msgpack map ``{v, store, device, name, role, public_key,
not_before, not_after}`` and ``sig`` the relay's Ed25519 signature of
``b"tillsync/cert/v1" + body``.  ``not_before`` and ``not_after`` (Unix seconds) bound
when a LAN peer accepts the certificate; the relay issues a fresh one on every sync, so
only a till that has not reached the relay for the whole validity (``CERT_VALIDITY``)
finds its LAN links refused, and a stolen till that never hears of its revocation
stops being trusted on the LAN when its certificate runs out.  (Certificates without
the two fields, from before they existed, have no limit.)

A revocation has the same shape under its own domain, ``b"tillsync/revoke/v1"``: its
body ``{v, store, device, upto, at}`` says that the device's entries after ``upto``
(the highest seq the relay had ingested of it when it was revoked) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack

from tillsync.peer.identity import DeviceKey, verify_signature
from tillsync.peer.log import canonical_body

_DOMAIN = b"tillsync/cert/v1"
_REVOKE_DOMAIN = b"tillsync/revoke/v1"
FORMAT = 1
CERT_VALIDITY = 90 * 86400  # seconds a certificate is valid from its issue
CLOCK_SKEW = 3600  # seconds a certificate is valid before its issue (tills' clocks drift)


class CertificateError(ValueError):
    """A certificate that does not parse or whose signature does not verify."""


@dataclass(frozen=True)
class Certificate:
    store: str
    device: str
    name: str
    role: str
    public_key: bytes
    raw: bytes  # the wire form, [body, sig], kept to forward it unchanged
    not_before: int | None = None  # Unix seconds; None: a certificate without limits
    not_after: int | None = None

    @classmethod
    def issue(cls, key: DeviceKey, *, store: str, device: str, name: str, role: str,
              public_key: bytes, now: float | None = None,
              validity: int = CERT_VALIDITY) -> Certificate:
        """Sign a certificate valid from ``now`` (minus ``CLOCK_SKEW``) for ``validity``
        seconds; without ``now``, one without limits (tests, the simulation)."""
        fields: dict[str, Any] = {"v": FORMAT, "store": store, "device": device, "name": name,
                                  "role": role, "public_key": public_key}
        if now is not None:
            fields.update(not_before=int(now) - CLOCK_SKEW, not_after=int(now) + validity)
        body = canonical_body(fields)
        raw: bytes = msgpack.packb([body, key.sign(_DOMAIN + body)], use_bin_type=True)
        return cls(store, device, name, role, public_key, raw, fields.get("not_before"),
                   fields.get("not_after"))

    @classmethod
    def load(cls, raw: bytes, issuer_key: bytes, *, store: str | None = None,
             now: float | None = None) -> Certificate:
        """Parse and check a certificate; raise ``CertificateError`` saying what is wrong.

        ``store``, when given, is the store the certificate must belong to; ``now``, when
        given, a time (Unix seconds) it must be valid at."""
        fields = _open(raw, issuer_key, _DOMAIN, "certificate")
        try:
            cert = cls(fields["store"], fields["device"], fields["name"], fields["role"],
                       fields["public_key"], raw, fields.get("not_before"),
                       fields.get("not_after"))
        except KeyError as exc:
            raise CertificateError(f"the certificate lacks {exc}") from None
        if not all(isinstance(v, str) for v in (cert.store, cert.device, cert.name, cert.role)) \
                or not (isinstance(cert.public_key, bytes) and len(cert.public_key) == 32) \
                or not all(v is None or type(v) is int for v in (cert.not_before,
                                                                  cert.not_after)):
            raise CertificateError("the certificate has a field of the wrong type")
        if store is not None and cert.store != store:
            raise CertificateError("the certificate is for another store")
        if now is not None:
            if cert.not_after is not None and now > cert.not_after:
                raise CertificateError(
                    f"the certificate of {cert.name} ({cert.device}) expired on "
                    f"{_when(cert.not_after)}: that till must sync with the relay to get a "
                    "new one")
            if cert.not_before is not None and now < cert.not_before:
                raise CertificateError(
                    f"the certificate of {cert.name} ({cert.device}) is not valid before "
                    f"{_when(cert.not_before)}: check this till's clock")
        return cert


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def _open(raw: bytes, issuer_key: bytes, domain: bytes, what: str) -> dict[str, Any]:
    """The fields of a signed ``[body, sig]`` record, once its signature verifies."""
    try:
        body, sig = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        fields = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception:  # msgpack raises several unrelated types for bad input
        raise CertificateError(f"the {what} is not a [body, sig] msgpack array") from None
    if not (isinstance(body, bytes) and isinstance(sig, bytes) and isinstance(fields, dict)):
        raise CertificateError(f"the {what} is not a [body, sig] msgpack array")
    if not verify_signature(issuer_key, sig, domain + body):
        raise CertificateError(f"the {what} is not signed by this store's key")
    if type(fields.get("v")) is not int or fields["v"] != FORMAT:
        raise CertificateError(f"{what} format {fields.get('v')!r} is not supported")
    return fields


@dataclass(frozen=True)
class Revocation:
    """The relay's signed word that ``device`` is revoked: its entries with a seq above
    ``upto`` are refused by the relay and by every till; those up to it stay valid."""

    store: str
    device: str
    upto: int
    at: str  # when the relay revoked it, RFC 3339 UTC
    raw: bytes

    @classmethod
    def issue(cls, key: DeviceKey, *, store: str, device: str, upto: int, at: str
              ) -> Revocation:
        body = canonical_body({"v": FORMAT, "store": store, "device": device, "upto": upto,
                               "at": at})
        raw: bytes = msgpack.packb([body, key.sign(_REVOKE_DOMAIN + body)], use_bin_type=True)
        return cls(store, device, upto, at, raw)

    @classmethod
    def load(cls, raw: bytes, issuer_key: bytes, *, store: str) -> Revocation:
        """Parse and check a revocation of a device of ``store``; raise
        ``CertificateError`` saying what is wrong."""
        fields = _open(raw, issuer_key, _REVOKE_DOMAIN, "revocation")
        store_, device, upto, at = (fields.get(k) for k in ("store", "device", "upto", "at"))
        if not (isinstance(store_, str) and isinstance(device, str) and isinstance(at, str)
                and type(upto) is int and upto >= 0):
            raise CertificateError("the revocation has a missing field or one of the wrong "
                                   "type")
        if store_ != store:
            raise CertificateError("the revocation is for another store")
        return cls(store_, device, upto, at, raw)
