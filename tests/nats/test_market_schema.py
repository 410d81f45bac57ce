"""The market-data payloads (docs/NATS.md) and the serve role's mirror of a collector's state, without a
server: exact decimals both ways, reasons for refusals, newest-wins states and once-only rows from a hot
pair of collectors."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from marketflow.client import decode
from marketflow.model import DerivativesTick, Liquidation, Ticker
from marketflow.nats.market_schema import (
    DerivativesUpdate,
    TickerUpdate,
    pack_derivatives,
    pack_liquidation,
    pack_ticker,
    subject_parts,
    unpack_derivatives,
    unpack_liquidations,
    unpack_market,
    unpack_ticker,
)
from marketflow.nats.schema import PayloadError
from marketflow.pipeline.market_data import LiveMarketData, Quote

D = Decimal


def ticker(ts: int, bid: str) -> Ticker:
    return Ticker(
        "bybit", "BTC-USDT-PERP", ts, ts + 1, D(bid), D("1E-8"), D("65000.50"), None, None, None, True
    )


def sample(ts: int, mark: str) -> DerivativesTick:
    return DerivativesTick(
        "bybit", "BTC-USDT-PERP", ts, ts, D(mark), None, D("-0.000125"), 7, None, None, True
    )


def test_payloads_round_trip_exactly_and_read_as_plain_json() -> None:
    quotes = [Quote("bybit", "BTC-USDT-PERP", 3, D("65000.10"), D("1E-8"), None, None)]
    payload, msg_id = pack_ticker(ticker(5, "65000.10"), quotes)
    assert unpack_ticker(payload) == TickerUpdate(ticker(5, "65000.10"), quotes)
    plain = msgspec.json.decode(payload)
    assert plain["ticker"] == [5, 6, "65000.10", "1E-8", "65000.50", None, None, None]
    assert plain["quotes"] == [[3, "65000.10", "1E-8", None, None]]
    assert (
        msg_id.startswith("ticker.bybit.BTC-USDT-PERP.")
        and pack_ticker(ticker(5, "65000.10"), quotes)[1] == msg_id
    )
    payload, _ = pack_derivatives(sample(9, "1.0"), [sample(8, "1.00")])
    assert unpack_derivatives(payload) == DerivativesUpdate(sample(9, "1.0"), [sample(8, "1.00")])
    assert str(unpack_derivatives(payload).samples[0].mark_price) == "1.00"
    liq = Liquidation(
        "bybit", "BTC-USDT-PERP", "1:Sell:65000.5:0.010", "sell", D("65000.5"), D("0.010"), 1, 2
    )
    payload, msg_id = pack_liquidation(liq)
    assert msg_id == "liquidations.bybit.BTC-USDT-PERP.1:Sell:65000.5:0.010"
    assert unpack_market("liquidations", payload, ("bybit", "BTC-USDT-PERP")) == [liq]
    assert subject_parts("mf.x", "mf.x.ticker.okx.BTC-USDT") == ("ticker", "okx", "BTC-USDT")


def test_refusals_name_the_cause() -> None:
    good, _ = pack_liquidation(Liquidation("okx", "BTC-USDT", "1", "buy", D("1"), D("2"), 1, 2))
    with pytest.raises(PayloadError, match="on the subject of okx ETH-USDT"):
        unpack_liquidations(good, ("okx", "ETH-USDT"))
    with pytest.raises(PayloadError, match="must be > 0"):
        unpack_liquidations(good.replace(b'"2"', b'"-2"'))
    with pytest.raises(PayloadError, match="Infinity is not a finite decimal"):
        unpack_liquidations(good.replace(b'"2"', b'"Infinity"'))
    with pytest.raises(PayloadError, match="liquidation without an id"):
        unpack_liquidations(good.replace(b'["1",', b'["",'))
    with pytest.raises(PayloadError, match=r"not a ticker message: Expected `decimal \| null`, got `bool`"):
        unpack_ticker(pack_ticker(ticker(1, "2"), [])[0].replace(b'"2"', b"true"))
    # A JSON number is read exactly from its text (never through a float), like a string.
    number = unpack_ticker(pack_ticker(ticker(1, "2"), [])[0].replace(b'"2"', b"2.10000000000000000001"))
    assert str(number.ticker.bid) == "2.10000000000000000001"
    with pytest.raises(PayloadError, match="not a market-data kind"):
        unpack_market("trades", good)
    with pytest.raises(PayloadError, match="is not mf.<kind>"):
        subject_parts("mf", "mf.ticker.okx")


def test_mirrored_state_keeps_the_newest_and_rows_of_a_hot_pair_once() -> None:
    live = LiveMarketData(1.0)
    live.mirror_ticker(ticker(10, "2"))
    live.mirror_ticker(ticker(9, "1"))  # the lagging collector of a hot pair: never rolls back
    assert live.ticker("bybit", "BTC-USDT-PERP")[0] == ticker(10, "2")
    live.mirror_derivatives(sample(3, "3"), [sample(1, "1"), sample(3, "3")])
    live.mirror_derivatives(sample(3, "3"), [sample(2, "2"), sample(3, "3.0")])  # the other collector's
    assert live.recent_samples("bybit", "BTC-USDT-PERP") == [sample(1, "1"), sample(2, "2"), sample(3, "3.0")]
    liq = Liquidation("bybit", "BTC-USDT-PERP", "x", "buy", D("1"), D("1"), 1, 2)
    live.mirror_liquidations([liq])
    live.mirror_liquidations([liq])
    assert live.recent_liquidations("bybit", "BTC-USDT-PERP") == [liq]
    assert live.statistics().duplicate_liquidations == 1


def test_every_payload_example_in_docs_nats_md_reads_as_documented() -> None:
    text = (Path(__file__).parents[2] / "docs" / "NATS.md").read_text()
    examples = re.findall(r"```json\n(.*?)```", text, re.S)
    kinds = []
    for example in examples:
        # The kind is the subject named last before the example ("A ticker message (`marketflow.ticker...`)").
        kind = re.findall(r"`marketflow\.(\w+)\.", text[: text.index(example)])[-1]
        assert decode(kind, example.encode())  # refuses nothing, holds records
        kinds.append(kind)
    assert kinds == ["trades", "book", "ticker", "derivatives", "liquidations", "candles"]
