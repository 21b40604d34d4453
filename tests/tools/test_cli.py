"""The command line, run as a real process and through ``main``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from tests.doubles import SHIFT, cli
from tillsync.tools.cli import main

SALE = json.dumps({"lines": [{"product_id": "bread", "qty": 2, "unit_price": 320},
                             {"product_id": "tomato", "qty": "0.75", "unit_price": 480}],
                   "payments": [{"method": "cash", "amount": 1000}],
                   "shift_client_id": SHIFT})


@pytest.fixture
def till(tmp_path: Path) -> Path:
    path = tmp_path / "till1"
    assert main(["peer", "init", str(path), "--name", "Till 1"]) == 0
    assert main(["peer", "put", str(path), "products", "bread", "--body",
                 '{"name": "Bread", "sku": "B1", "price": 320, "reorder_level": "5"}']) == 0
    assert main(["peer", "put", str(path), "products", "tomato", "--body",
                 '{"name": "Tomatoes", "sku": "T1", "price": 450, "volatile": true}']) == 0
    assert main(["peer", "put", str(path), "cashiers", "ann", "--body",
                 '{"name": "Ann", "role": "cashier", "pin": "1234"}']) == 0
    assert main(["peer", "record", str(path), "shift_open", "--client-id", SHIFT, "--body",
                 '{"cashier_id": "ann", "opening_cash": 10000}']) == 0
    return path


def test_a_sale_end_to_end_in_separate_processes(till: Path) -> None:
    out = cli("peer", "record", str(till), "sale", "--body", SALE, "--json").stdout
    entry = json.loads(out)
    assert entry["ticket"] == "TILL1-000001" and entry["seq"] == 2
    stock = json.loads(cli("peer", "stock", str(till), "--json").stdout)
    assert {r["product_id"]: r.get("qty") for r in stock} == {"bread": "-2", "tomato": None}
    status = json.loads(cli("peer", "status", str(till), "--json").stdout)
    assert status["pending"] == 2 and status["open_shifts"][0]["expected_cash"] == 11000
    verify = cli("peer", "verify", str(till))
    assert verify.stdout.startswith("ok: 2 entries")
    got = json.loads(cli("peer", "get", str(till), "cashiers", "ann").stdout)
    assert got == {"name": "Ann", "role": "cashier", "active": True}


def test_init_never_prints_the_private_key(tmp_path: Path) -> None:
    result = cli("peer", "init", str(tmp_path / "t"), "--name", "T", "--json")
    key = (tmp_path / "t" / "device.key").read_text()
    assert "PRIVATE KEY" in key
    body = key.splitlines()[1]
    assert body not in result.stdout + result.stderr
    assert "PRIVATE" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["record", "{till}", "sale", "--body", "{not json"], "not valid JSON"),
        (["record", "{till}", "sael", "--body", "{}"], "unknown entry kind 'sael'"),
        (["record", "{till}", "sale", "--body",
          SALE.replace('"qty": 2', '"qty": 2.5')], "is a float"),
        (["record", "{till}", "sale", "--body", SALE.replace("bread", "ghost")],
         "unknown product 'ghost'"),
        (["put", "{till}", "products", "p9", "--body",
          '{"name": "X", "sku": "X", "price": -1}'], "record.price"),
        (["put", "{till}", "products", "p9", "--body", "@/nonexistent.json"], "No such file"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message_and_stores_nothing(
    till: Path, args: list[str], message: str
) -> None:
    result = cli("peer", *[a.replace("{till}", str(till)) for a in args], check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert json.loads(cli("peer", "status", str(till), "--json").stdout)["last_seq"] == 1
    assert json.loads(cli("peer", "get", str(till), "products").stdout).keys() == {"bread",
                                                                                  "tomato"}


def test_missing_store_and_usage_errors(tmp_path: Path) -> None:
    result = cli("peer", "status", str(tmp_path / "none"), check=False)
    assert result.returncode == 3 and "peer init" in result.stderr
    result = cli("peer", "put", str(tmp_path), "prodcts", "x", "--body", "{}", check=False)
    assert result.returncode == 2 and "invalid choice" in result.stderr
    assert "exit status" in cli("peer", "record", "--help").stdout


def test_body_from_stdin(till: Path) -> None:
    result = cli("peer", "record", str(till), "sale", "--body", "-", input=SALE)
    assert "ticket TILL1-000001" in result.stdout


def test_demo_numbers_every_sale_after_the_outage(tmp_path: Path) -> None:
    result = cli("demo", "--dir", str(tmp_path / "demo"))
    assert "9 sales, invoice numbers 1..9: gapless, none twice" in result.stdout
    assert "offline sales numbered: yes; pending entries per till: [0, 0, 0]" in result.stdout
    assert "raises milk to 1.29: on tills 2 and 3, stored" in result.stdout
    # Till 3 never reached the relay: its receipts and the new price came over the LAN.
    receipts = json.loads(cli("peer", "receipts", str(tmp_path / "demo" / "till3"),
                              "--json").stdout)
    assert sorted(r["invoice_no"] for r in receipts if r["kind"] == "sale") == list(
        range(1, 10))
    milk = json.loads(cli("peer", "get", str(tmp_path / "demo" / "till3"), "products",
                          "milk").stdout)
    assert milk["price"] == 129


def test_a_sale_says_its_number_comes_at_sync_and_a_retry_says_it_is_one(
        till: Path, capsys: pytest.CaptureFixture[str]) -> None:
    retry = "6a0f3c1e-2b4d-4e5f-8a7b-9c0d1e2f3a4b"
    assert main(["peer", "record", str(till), "sale", "--client-id", retry, "--body",
                 SALE]) == 0
    first = capsys.readouterr().out
    assert first.startswith("recorded sale seq 2") and "ticket TILL1-000001" in first
    assert "official invoice number: assigned at sync" in first
    # The reprint hint is a command to paste, with this store and this ticket.
    assert f"(reprint: tillsync peer invoice {shlex.quote(str(till))} TILL1-000001)" in first
    assert main(["peer", "record", str(till), "sale", "--client-id", retry, "--body",
                 SALE]) == 0
    again = capsys.readouterr().out
    assert again.startswith("already recorded (a retry") and "seq 2" in again


@pytest.mark.parametrize("port", ["99999", "-1", "abc"])
def test_relay_serve_refuses_a_bad_port_before_it_creates_anything(
        tmp_path: Path, port: str) -> None:
    result = cli("relay", "serve", "--data", str(tmp_path / "relay"), "--port", port,
                 check=False)
    assert result.returncode == 2 and "argument --port" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "relay").exists()


def test_log_refuses_an_unknown_kind_rather_than_calling_the_log_empty(till: Path) -> None:
    result = cli("peer", "log", str(till), "--kind", "sael", check=False)
    assert result.returncode == 2 and "invalid choice: 'sael'" in result.stderr, result.stderr
    assert "the log is empty" not in result.stdout
    assert "shift_open" in cli("peer", "log", str(till), "--kind", "shift_open").stdout


@pytest.mark.parametrize("verb", [["peer", "init", "{dir}", "--name", "X", "--code", "C"],
                                  ["peer", "sync", "{dir}", "--once"]])
def test_an_http_relay_url_is_bad_input_not_a_network_failure(
        tmp_path: Path, verb: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("{dir}", str(tmp_path / "t")) for a in verb]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--relay", "http://127.0.0.1:8765"])
    assert exited.value.code == 2
    assert "is not a relay URL: give ws://HOST:PORT" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()  # nothing created
