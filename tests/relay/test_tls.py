"""The relay over TLS (``relay serve --tls-cert --tls-key``), with a self-signed
certificate made here: tills pin it or trust it as a CA file; anything else is refused
before a single frame is sent, and nothing is enrolled."""

from __future__ import annotations

import datetime
import ipaddress
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.relay.processes import Relays, TillDir, cli_json, enroll_code, query, run_cli

STORE = "shop-tls"


def self_signed(folder: Path) -> tuple[Path, Path, str]:
    """(certificate file, key file, SHA-256 fingerprint) for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tillsync test relay")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "relay.crt", folder / "relay.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file, cert.fingerprint(hashes.SHA256()).hex(":")


def init(till: TillDir, url: str, code: str, *extra: str) -> tuple[int, str]:
    result = run_cli("peer", "init", str(till.path), "--name", till.name, "--relay", url,
                     "--code", code, "--json", *extra, check=False)
    return result.returncode, result.stderr


def test_tills_reach_a_tls_relay_by_pin_or_ca_file_and_nothing_else(tmp_path: Path) -> None:
    cert, key, pin = self_signed(tmp_path)
    with Relays(tmp_path) as relays:
        relay = relays.start("relay")
        relay.kill()
        relay.extra = ["--tls-cert", str(cert), "--tls-key", str(key)]
        port = relay.start()
        url = f"wss://127.0.0.1:{port}"
        code = enroll_code(relay, STORE, "Till")

        # Refused, before enrolling anything: the system's trust store, a wrong pin,
        # plain ws:// to a TLS port.
        wrong = "00" * 32
        for args, why in ([(), "CERTIFICATE_VERIFY_FAILED"],
                          [("--tls-pin", wrong), "is not the pinned one"],
                          [(), "cannot reach the relay"]):
            target = url if args or why != "cannot reach the relay" else url.replace("wss", "ws")
            status, stderr = init(TillDir(tmp_path / "nope", "Till"), target, code, *args)
            assert status == 4 and why in stderr, stderr
            assert not (tmp_path / "nope").exists()
        assert query(relay, "SELECT count(*) FROM devices") == [(0,)]

        # Pinned: enrolled, and every later round checks the same pin.
        pinned = TillDir(tmp_path / "pinned", "Till")
        status, stderr = init(pinned, url, code, "--tls-pin", pin.upper())
        assert status == 0, stderr
        pinned.put("products", "bread", {"name": "Bread", "sku": "B1", "price": 320})
        assert pinned.sync_json()["errors"] == []
        assert pinned.status()["last_error"] is None

        # The certificate as a CA file (the system trust store stays out of it).
        trusting = TillDir(tmp_path / "ca", "Till 2")
        status, stderr = init(trusting, url, enroll_code(relay, STORE, "Till 2"),
                              "--tls-ca", str(cert))
        assert status == 0, stderr
        trusting.sync()
        assert trusting.master("products")["bread"]["price"] == 320
        assert cli_json("peer", "status", str(trusting.path))["relay"] == url


@pytest.mark.postgres
def test_worker_processes_serve_tls_too(tmp_path: Path, pg_db: str) -> None:
    """``relay serve --workers N --tls-cert --tls-key``: every worker serves wss://."""
    cert, key, pin = self_signed(tmp_path)
    with Relays(tmp_path, pg_db) as relays:
        relay = relays.start("relay", extra=["--workers", "2", "--tls-cert", str(cert),
                                             "--tls-key", str(key)])
        assert "relay listening on wss://" in (relay.logs / "relay-1.out").read_text()
        url = f"wss://127.0.0.1:{relay.port}"
        tills = [TillDir(tmp_path / f"till{i}", f"Till {i}") for i in range(4)]
        for till in tills:
            status, stderr = init(till, url, enroll_code(relay, STORE, till.name),
                                  "--tls-pin", pin)
            assert status == 0, stderr
        tills[0].put("products", "bread", {"name": "Bread", "sku": "B1", "price": 320})
        assert tills[0].sync_json()["errors"] == []
        for till in tills[1:]:  # connections the kernel spreads over both workers
            assert till.sync_json()["errors"] == []
            assert till.master("products")["bread"]["price"] == 320
        served = set(re.findall(r"\[([0-9]+)\] tillsync\.relay [^\n]* connected",
                                relay.stderr()))
        assert served, relay.stderr()[-2000:]
