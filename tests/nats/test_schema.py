"""The wire contract (docs/NATS.md) without a server: subjects, payloads, message ids, the serve filter."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from marketflow.model import Trade
from marketflow.nats.schema import PayloadError, pack_trades, stream_name, subject, unpack_book, unpack_trades
from marketflow.nats.serve import RecentIds


def trade(symbol: str, i: int) -> Trade:
    return Trade("okx", symbol, str(i), Decimal("0.000123400"), Decimal("1E+3"), "sell", i, i + 1)


def test_trades_pack_per_symbol_in_order_with_exact_decimal_strings() -> None:
    batch = [trade("BTC-USDT", i) if i % 2 else trade("ETH-USDT-PERP", i) for i in range(1203)]
    packed = list(pack_trades(batch))
    assert [(p[1], p[4]) for p in packed] == [
        ("ETH-USDT-PERP", 500),
        ("ETH-USDT-PERP", 102),
        ("BTC-USDT", 500),
        ("BTC-USDT", 101),
    ]
    first = json.loads(packed[0][2])
    assert first["v"] == 1 and first["trades"][0] == ["0", "0.000123400", "1E+3", "sell", 0, 1]
    assert [t for p in packed for t in unpack_trades(p[2])] == sorted(
        batch, key=lambda t: (t.symbol != "ETH-USDT-PERP", int(t.id))
    )
    # The id is the content's: the same trades give the same id, other trades another.
    again = list(pack_trades(batch))
    assert [p[3] for p in again] == [p[3] for p in packed] and len({p[3] for p in packed}) == 4


def test_bad_payloads_and_subjects_are_refused_with_a_reason() -> None:
    with pytest.raises(PayloadError, match="not a trades message"):
        unpack_trades(b'{"v": 1, "exchange": "okx"}')
    with pytest.raises(PayloadError, match="version 2"):
        unpack_trades(b'{"v": 2, "exchange": "okx", "symbol": "BTC-USDT", "trades": []}')
    with pytest.raises(PayloadError, match="not a book message"):
        unpack_book(b"[]")
    with pytest.raises(ValueError, match="cannot be a subject token"):
        subject("marketflow", "trades", "okx", "BTC.USDT")
    with pytest.raises(ValueError, match="unknown kind"):
        subject("marketflow", "quotes", "okx", "BTC-USDT")
    assert stream_name("prod.mf", "trades") == "PROD_MF_TRADES"


def test_recent_ids_pass_each_trade_once_and_forget_two_generations_back() -> None:
    recent = RecentIds(limit=3)
    first = [trade("BTC-USDT", i) for i in range(5)]
    assert recent.fresh(first) == first
    assert recent.fresh(first[2:] + [trade("ETH-USDT", 1)]) == [trade("ETH-USDT", 1)]
    # ids 0..2 filled the first generation, 3..4 the second: 0 is forgotten once a third one starts.
    assert recent.fresh([trade("BTC-USDT", i) for i in range(5, 7)]) == [
        trade("BTC-USDT", 5),
        trade("BTC-USDT", 6),
    ]
    assert recent.fresh([trade("BTC-USDT", 0), trade("BTC-USDT", 4)]) == [trade("BTC-USDT", 0)]
