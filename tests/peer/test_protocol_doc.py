"""schemas/protocol/README.md and the schema files say what the code does.

Every error code the code can send (found in the source, not listed by hand) is in the
README's tables and in the schemas' enums, and nothing listed there is sent by no code;
the protocol version, the batch limit, the rounding of sale totals and the certificate
with validity bounds are as the README writes them.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.peer.test_sync_engine import _frame_validator
from tillsync.peer.cert import Certificate, CertificateError
from tillsync.peer.identity import DeviceKey
from tillsync.peer.sync.frames import MAX_BATCH, PROTOCOL_VERSION, ProtocolError, decode, encode
from tillsync.peer.sync.receipts import GENESIS, seal_receipts
from tillsync.peer.totals import sale_total
from tillsync.relay import faults
from tillsync.tools.fuzz_frames import CLOSE_CODES, documented_codes

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas" / "protocol"
README = (SCHEMAS / "README.md").read_text(encoding="utf-8")
STORE, DEVICE = "store-1", "3f1c8a52-6d1e-4b7a-9a43-0c2f5e9b7d10"


def _schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    return loaded


def _section(title: str) -> str:
    """The README's text from the heading ``title`` to the next heading of its level."""
    start = README.index(f"\n{title}\n")
    level = title.split(" ")[0]
    end = README.find(f"\n{level} ", start + len(title) + 2)
    return README[start:end if end != -1 else len(README)]


def _table_codes(text: str) -> set[str]:
    """The codes in the first column of the markdown tables of ``text``."""
    return set(re.findall(r"^\| `([a-z_]+)` \|", text, re.MULTILINE))


def _sources() -> list[tuple[Path, ast.Module]]:
    files = sorted([*(REPO / "peer").rglob("*.py"), *(REPO / "relay").rglob("*.py")])
    return [(f, ast.parse(f.read_text(encoding="utf-8"))) for f in files]


def _constants() -> dict[str, str]:
    """Module-level ``NAME = "text"`` of the scanned sources and schemas/limits.py: codes
    passed by name (``OUT_OF_RANGE``) count as their text."""
    trees = [t for _p, t in _sources()]
    trees.append(ast.parse((REPO / "schemas" / "limits.py").read_text(encoding="utf-8")))
    return {target.id: node.value.value for tree in trees for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            for target in node.targets if isinstance(target, ast.Name)}


def _first_str(args: list[ast.expr], index: int) -> str | None:
    if len(args) <= index:
        return None
    arg = args[index]
    if isinstance(arg, ast.Name):
        return _constants().get(arg.id)
    if isinstance(arg, ast.Constant):
        value = arg.value
        return value if isinstance(value, str) else None
    return None


def codes_sent_in_error_frames() -> set[str]:
    """Every code the code can put in an error frame: ``ProtocolError(code, ...)`` (a
    link sends it as it is) and ``link.fail(code, ...)``."""
    found = set()
    for _path, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else \
                func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("ProtocolError", "fail"):
                code = _first_str(node.args, 0)
                if code is not None:
                    found.add(code)
    return found


def codes_of_rejections() -> set[str]:
    """Every ``error.code`` of a rejected receipt: ``reject(entry, code, ...)`` and the
    ``(code, message)`` problems ``relay/ingest.py``, ``relay/decide.py`` and
    ``peer/entry_rules.py`` return."""
    found = set()
    for path, tree in _sources():
        if path.name not in ("ingest.py", "decide.py", "entry_rules.py"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "reject":
                code = _first_str(node.args, 1)
                if code is not None:
                    found.add(code)
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
                code = _first_str(node.value.elts, 0)
                if code is not None and len(node.value.elts) == 2:
                    found.add(code)
    return found


def test_the_source_scan_finds_the_codes_it_should() -> None:
    """The scan itself: it sees codes of every kind of call site."""
    assert {"malformed", "bad_field", "internal", "unknown_device", "bad_entry",
            "forbidden"} <= codes_sent_in_error_frames()
    assert {"bad_signature", "revoked", "schema", "malformed_body", "out_of_range",
            "undecidable"} <= codes_of_rejections()


def test_every_error_code_sent_is_listed_in_the_readme_and_messages_json() -> None:
    # Storage faults are sent by their code's name (``link.fail(fault.code, ...)``).
    sent = codes_sent_in_error_frames() | set(faults.CODES)
    readme = _table_codes(_section("## Errors").split("### Rejection codes")[0])
    enum = _schema("messages.json")["$defs"]["error"]["properties"]["code"]["enum"]
    assert sent == readme, "README's Errors table and the code differ"
    assert sent == set(enum), "messages.json's error.code enum and the code differ"
    assert len(enum) == len(set(enum))
    assert documented_codes() == sent  # what the fuzzer accepts


def test_every_rejection_code_is_listed_in_the_readme_and_receipt_json() -> None:
    rejections = codes_of_rejections()
    readme = _table_codes(_section("### Rejection codes (in receipts)"))
    enum = _schema("receipt.json")["properties"]["error"]["properties"]["code"]["enum"]
    assert rejections == readme
    assert rejections == set(enum)
    assert "revoked" in enum


def test_a_receipt_with_a_key_the_schema_does_not_name_is_valid() -> None:
    """Receipts are hashed whole, unknown keys included: the schema must not refuse
    what a client must keep and hash."""
    key = DeviceKey.generate()
    receipts: list[dict[str, Any]] = [
        {"client_id": "c1", "device_id": DEVICE, "seq": 1, "kind": "shift_open",
         "status": "accepted", "warnings": [], "server_id": "shift-1", "later_key": 7}]
    seal_receipts(key, receipts, 1, GENESIS)
    frame = decode(encode("receipts", receipts=receipts, head=1))
    assert _frame_validator()(frame) == []
    assert _schema("receipt.json")["additionalProperties"] is True


def test_the_protocol_version_is_the_same_everywhere() -> None:
    messages = _schema("messages.json")
    assert messages["x-protocol-version"] == PROTOCOL_VERSION
    for t in ("hello", "enroll"):
        text = messages["$defs"][t]["properties"]["v"]["description"]
        assert re.findall(r"\b\d\b", text) == [str(PROTOCOL_VERSION)], text
    assert f"The protocol version is `{PROTOCOL_VERSION}`" in README


def test_a_batch_over_max_batch_is_fatal_as_written() -> None:
    assert _schema("messages.json")["x-max-batch"] == MAX_BATCH
    assert f"`MAX_BATCH` = {MAX_BATCH}" in README
    with pytest.raises(ProtocolError) as refused:
        decode(encode("entries", entries=[[]] * (MAX_BATCH + 1)))
    assert (refused.value.code, refused.value.fatal) == ("bad_field", True)
    assert "A longer array is a **fatal** `bad_field`" in README
    assert "fatal bad_field" in _schema("messages.json")["$defs"]["entries"]["description"]


def test_the_close_codes_the_fuzzer_accepts_are_the_documented_ones() -> None:
    rows = re.findall(r"^\| ([14]\d{3}[^|]*)\|", _section("### Close codes"), re.MULTILINE)
    documented = {int(c) for row in rows for c in re.findall(r"\b[14]\d{3}\b", row)}
    assert documented == {1000, 1001, 1002, 1007, 1009, 1011, 1013, 4001, 4002}
    assert CLOSE_CODES <= documented


# -- the test vectors -----------------------------------------------------------------


def _readme_hex() -> str:
    return "".join(README.split())


def test_the_certificate_with_validity_bounds_is_the_readme_vector() -> None:
    device = DeviceKey(Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32))
    relay = DeviceKey(Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32))
    cert = Certificate.issue(relay, store=STORE, device=DEVICE, name="Till 1", role="till",
                             public_key=device.public_bytes, now=1714554000)
    assert (cert.not_before, cert.not_after) == (1714550400, 1722330000)
    body, sig = msgpack.unpackb(cert.raw)
    readme = _readme_hex()
    assert [v.hex() for v in (body, sig, cert.raw) if v.hex() not in readme] == []
    assert f"certificate body ({len(body)} bytes)" in README
    assert f"certificate = msgpack([body, sig]) ({len(cert.raw)} bytes)" in README
    for now in (1714550400, 1722330000):
        Certificate.load(cert.raw, relay.public_bytes, store=STORE, now=now)
    for now in (1714550399, 1722330001):
        with pytest.raises(CertificateError):
            Certificate.load(cert.raw, relay.public_bytes, store=STORE, now=now)


def test_the_sale_total_example_rounds_each_line_half_up() -> None:
    lines = [{"product_id": "bread", "qty": "0.75", "unit_price": 410},
             {"product_id": "cheese", "qty": "0.333", "unit_price": 150},
             {"product_id": "wine", "qty": "1.5", "unit_price": 99, "discount": 9}]
    assert [sale_total([line]) for line in lines] == [308, 50, 140]
    assert sale_total(lines) == 498
    assert "`client_total` **498**" in README
    assert sale_total([{"qty": "0.125", "unit_price": 4}]) == 1
    assert sale_total([{"qty": "0.375", "unit_price": 4}]) == 2
    assert '`"0.125"` × 4\n→ 1, `"0.375"` × 4 → 2' in README
