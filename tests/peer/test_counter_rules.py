"""What a till refuses at the counter: deleted and inactive records, credit limits; and
what it allows: a refund of a sale known from a receipt, ``post_now`` on a journal entry.
All on a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.doubles import SHIFT, cli, sale, stocked_till
from tests.peer.test_receive_entries import enrolled_till, make_device
from tillsync.peer.errors import InvalidInput, UnknownReference
from tillsync.peer.master.document import MasterData
from tillsync.peer.store import Till


def on_account(customer: str, *lines: tuple[str, int | str, int], amount: int) -> dict[str, Any]:
    return {**sale(*lines), "customer_id": customer,
            "payments": [{"method": "account", "amount": amount}]}


async def test_a_deleted_product_leaves_every_read_and_cannot_be_sold(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        await till.record("sale", sale(("cheese", 1, 1890)))
        await till.delete("products", "cheese")
        assert till.get("products", "cheese") is None
        assert "cheese" not in till.all("products")
        assert "cheese" not in {r["product_id"] for r in await till.stock()}
        entries = len(await till.entries())
        with pytest.raises(UnknownReference, match=r"lines\[0\].product_id: unknown product "
                           r"'cheese' \(deleted"):
            await till.record("sale", sale(("cheese", 1, 1890)))
        assert len(await till.entries()) == entries
        with pytest.raises(InvalidInput, match="no products record 'cheese'"):
            await till.delete("products", "cheese")
        with pytest.raises(InvalidInput, match="settings cannot be deleted"):
            await till.delete("settings", "store")
    # the delete is stored: it holds after a reopen
    async with await Till.open(tmp_path) as till:
        assert till.get("products", "cheese") is None


async def test_a_delete_wins_over_an_edit_made_elsewhere_before_it_arrived() -> None:
    one = MasterData.new(uuid.uuid4().bytes)
    one.put("customers", "eve", {"name": "Eve"})
    two = MasterData.load(one.save(), uuid.uuid4().bytes)
    one.delete("customers", "eve")
    two.put("customers", "eve", {"phone": "555"})  # two has not seen the delete yet
    one.apply(two.save())
    two.apply(one.save())
    assert one.get("customers", "eve") is None and two.get("customers", "eve") is None
    assert one.heads() == two.heads()
    # known to be deleted, the id may be used again: a new record
    two.put("customers", "eve", {"name": "Eve again"})
    one.apply(two.save())
    assert one.get("customers", "eve") == {"name": "Eve again", "active": True}


async def test_inactive_product_or_customer_is_refused_by_name(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        await till.put("products", "bread", {"active": False})
        with pytest.raises(InvalidInput, match=r"lines\[0\].product_id: product 'bread' "
                           r"\(Bread\) is inactive"):
            await till.record("sale", sale(("bread", 1, 320)))
        with pytest.raises(InvalidInput, match="product 'bread' .* inactive"):
            await till.record("held_sale", {"lines": [{"product_id": "bread", "qty": 1,
                                                       "unit_price": 320}]})
        await till.put("products", "bread", {"active": True})
        await till.record("sale", sale(("bread", 1, 320)))
        await till.put("customers", "bob", {"active": False})
        with pytest.raises(InvalidInput, match=r"customer_id: customer 'bob' \(Bob\) is "
                           "inactive"):
            await till.record("sale", {**sale(("bread", 1, 320)), "customer_id": "bob"})
        # an inactive customer may still settle the account
        await till.record("customer_payment", {"customer_id": "bob", "amount": 1,
                                               "method": "cash"})


async def test_an_account_sale_past_the_credit_limit_is_refused_with_balance_and_limit(
        tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:  # bob's limit: 50000
        await till.record("sale", on_account("bob", ("cheese", 20, 1890), amount=37800))
        assert await till.balance("bob") == 37800
        entries = len(await till.entries())
        with pytest.raises(InvalidInput, match="credit limit exceeded: customer 'bob' "
                           r"\(Bob\) owes 37800 and this sale adds 13000 on account, 50800 "
                           "in all, above the credit limit of 50000"):
            await till.record("sale", on_account("bob", ("bread", 40, 325), amount=13000))
        assert len(await till.entries()) == entries and await till.balance("bob") == 37800
        # exactly the limit passes; a payment brings the balance down and never is refused
        await till.record("sale", on_account("bob", ("bread", 38, 320), amount=12160))
        assert await till.balance("bob") == 49960
        await till.record("customer_payment", {"customer_id": "bob", "amount": 20000,
                                               "method": "card"})
        await till.record("sale", on_account("bob", ("bread", 40, 325), amount=13000))
        # no limit, no check; a limit of 0 allows no credit
        await till.put("customers", "cas", {"name": "Cas"})
        await till.record("sale", on_account("cas", ("cheese", 100, 1890), amount=189000))
        await till.put("customers", "dee", {"name": "Dee", "credit_limit": 0})
        with pytest.raises(InvalidInput, match="owes 0 and this sale adds 1"):
            await till.record("sale", on_account("dee", ("bread", 1, 1), amount=1))


async def test_two_account_sales_in_one_write_batch_count_together(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        first, second = await asyncio.gather(
            till.record("sale", on_account("bob", ("cheese", 20, 1890), amount=37800)),
            till.record("sale", on_account("bob", ("cheese", 10, 1890), amount=18900)),
            return_exceptions=True)
        outcomes = sorted(type(r).__name__ for r in (first, second))
        assert outcomes == ["Entry", "InvalidInput"]
        assert await till.balance("bob") in (37800, 18900)


async def test_the_balance_counts_entries_held_from_other_tills(tmp_path: Path) -> None:
    till = await enrolled_till(tmp_path / "a")
    async with till:
        await till.put("customers", "bob", {"name": "Bob", "credit_limit": 50000})
        await till.put("cashiers", "ann", {"name": "Ann", "role": "cashier", "pin": "1234"})
        await till.record("shift_open", {"cashier_id": "ann", "opening_cash": 0},
                          client_id=SHIFT)
        other = make_device("Till 2")
        assert await till.add_certs([other.cert]) == []
        theirs = other.chain.next("shift_open", {"cashier_id": "ann", "opening_cash": 0})
        elsewhere = other.chain.next("sale", {**on_account("bob", ("bread", 100, 320),
                                                           amount=32000),
                                              "shift_client_id": theirs.client_id})
        assert await till.receive_entries([theirs, elsewhere]) == 2
        assert await till.balance("bob") == 32000
        with pytest.raises(InvalidInput, match="owes 32000 and this sale adds 20000 on "
                           "account, 52000 in all, above the credit limit of 50000"):
            await till.record("sale", on_account("bob", ("bread", 62, 320), amount=20000))
        await till.record("sale", on_account("bob", ("bread", 56, 320), amount=18000))


async def test_a_refund_may_name_a_sale_known_only_from_its_receipt(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        elsewhere = str(uuid.uuid4())
        refund = {"original_sale_client_id": elsewhere, "method": "cash", "amount": 320,
                  "reason": "stale", "shift_client_id": SHIFT,
                  "lines": [{"product_id": "bread", "qty": 1, "unit_price": 320}]}
        with pytest.raises(UnknownReference, match="neither its entry nor its receipt"):
            await till.record("refund", refund)
        receipt = {"client_id": elsewhere, "device_id": str(uuid.uuid4()), "seq": 4,
                   "kind": "sale", "status": "accepted", "server_seq": 1, "warnings": []}
        await till._db.store_receipts([(elsewhere, 1, "accepted",
                                        msgpack.packb(receipt, use_bin_type=True))])
        assert (await till.record("refund", refund)).kind == "refund"


async def test_post_now_is_accepted_and_ignored(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path) as till:
        body = {"lines": [{"account": "cash", "debit": 5, "credit": 0},
                          {"account": "sales", "debit": 0, "credit": 5}], "post_now": True}
        entry = await till.record("journal_entry", body)
        assert entry.body["post_now"] is True
        with pytest.raises(Exception, match="boolean"):
            await till.record("journal_entry", {**body, "post_now": "yes"})


async def test_peer_delete_on_a_store_no_daemon_holds(tmp_path: Path) -> None:
    async with await stocked_till(tmp_path):
        pass
    done = cli("peer", "delete", str(tmp_path), "customers", "bob", "--json")
    assert json.loads(done.stdout) == {"collection": "customers", "id": "bob", "deleted": True}
    again = cli("peer", "delete", str(tmp_path), "customers", "bob", check=False)
    assert again.returncode == 2 and "no customers record 'bob'" in again.stderr
    settings = cli("peer", "delete", str(tmp_path), "settings", "store", check=False)
    assert settings.returncode == 2 and "invalid choice" in settings.stderr
    async with await Till.open(tmp_path, readonly=True) as till:
        assert till.get("customers", "bob") is None and till.get("products", "bread")
