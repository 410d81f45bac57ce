"""No venue prints a trade at or below zero: every decoder and REST trade parser refuses a price or amount
that is not a finite decimal above zero, naming the field and the value (`exchanges/trade_values.py`).

Live frames: the frame is counted malformed (the `marketflow_decoder_parse_errors` metric), its error names
the field and the value, the decoder keeps going and the next good frame's trade comes through. A frame
holding several trades is refused whole when one is bad, as it is for a NaN. REST: the page is refused with
a ValueError (the backfiller records the failure).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
import trio

from marketflow.exchanges import VENUES
from marketflow.exchanges.base import Decoded
from marketflow.exchanges.binance.rest import parse_rest_agg_trades
from marketflow.exchanges.bybit.rest import parse_recent_trades
from marketflow.exchanges.coinbase.frames import Values
from marketflow.exchanges.coinbase.rest import parse_ticker
from marketflow.exchanges.kraken.rest import parse_trades
from marketflow.exchanges.okx.rest import parse_history_trades
from marketflow.model import RawFrames, Trade
from marketflow.pipeline.normalizer import Normalizer
from marketflow.runtime.bus import Bus, Overflow

T_MS = 1700000000000


def bybit_trade(i: int, price: str, amount: str) -> str:
    return f'{{"T":{T_MS + i},"s":"BTCUSDT","S":"Buy","v":"{amount}","p":"{price}","i":"id-{i}"}}'


def bybit(trades: list[tuple[int, str, str]]) -> bytes:
    rows = ",".join(bybit_trade(*t) for t in trades)
    return f'{{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":{T_MS},"data":[{rows}]}}'.encode()


def binance(trades: list[tuple[int, str, str]]) -> bytes:
    ((i, price, amount),) = trades  # an aggTrade frame holds one trade
    return (
        f'{{"stream":"btcusdt@aggTrade","data":{{"e":"aggTrade","E":{T_MS + i},"s":"BTCUSDT","a":{i},'
        f'"p":"{price}","q":"{amount}","f":{i},"l":{i},"T":{T_MS + i},"m":true}}}}'
    ).encode()


def okx(trades: list[tuple[int, str, str]]) -> bytes:
    rows = ",".join(
        f'{{"instId":"BTC-USDT","tradeId":"{i}","px":"{price}","sz":"{amount}","side":"buy",'
        f'"ts":"{T_MS + i}","count":"1"}}'
        for i, price, amount in trades
    )
    return f'{{"arg":{{"channel":"trades","instId":"BTC-USDT"}},"data":[{rows}]}}'.encode()


def coinbase(trades: list[tuple[int, str, str]]) -> bytes:
    rows = ",".join(
        f'{{"trade_id":"{i}","product_id":"BTC-USD","price":"{price}","size":"{amount}","side":"BUY",'
        f'"time":"2026-08-14T20:42:27.265123Z"}}'
        for i, price, amount in trades
    )
    return (
        '{"channel":"market_trades","client_id":"","timestamp":"2026-08-14T20:42:27.265123456Z",'
        f'"sequence_num":1,"events":[{{"type":"update","trades":[{rows}]}}]}}'
    ).encode()


def kraken(trades: list[tuple[int, str, str]]) -> bytes:
    # Kraken writes prices and quantities as JSON numbers.
    rows = ",".join(
        f'{{"symbol":"BTC/USD","side":"buy","price":{price},"qty":{amount},"ord_type":"market",'
        f'"trade_id":{i},"timestamp":"2023-09-25T07:49:37.708706Z"}}'
        for i, price, amount in trades
    )
    return f'{{"channel":"trade","type":"update","data":[{rows}]}}'.encode()


Frame = Callable[[list[tuple[int, str, str]]], bytes]
VENUE_FRAMES: dict[str, tuple[str, str, Frame]] = {
    "bybit": ("linear", "BTCUSDT", bybit),
    "binance": ("spot", "BTCUSDT", binance),
    "okx": ("spot", "BTC-USDT", okx),
    "coinbase": ("spot", "BTC-USD", coinbase),
    "kraken": ("spot", "BTC/USD", kraken),
}
BAD = [("price", "-1"), ("price", "-65000.1"), ("price", "0"), ("price", "-0"), ("amount", "0")]
BAD += [("amount", "0.000"), ("amount", "-0.5")]


def good_and_bad(field: str, bad: str) -> tuple[str, str]:
    return (bad, "0.5") if field == "price" else ("65000.1", bad)


def test_every_venue_is_covered() -> None:
    assert set(VENUE_FRAMES) == set(VENUES)


@pytest.mark.parametrize(("field", "bad"), BAD)
@pytest.mark.parametrize("name", sorted(VENUE_FRAMES))
def test_a_trade_at_or_below_zero_is_refused_and_the_next_frame_still_decodes(
    name: str, field: str, bad: str
) -> None:
    market, native, frame = VENUE_FRAMES[name]
    decoder = VENUES[name].decoder(market, {native: "BTC-X"})
    out = Decoded()
    price, amount = good_and_bad(field, bad)
    decoder.decode([frame([(7, price, amount)]), frame([(8, "65000.1", "0.5")])], 0, out)
    good_id = "id-8" if name == "bybit" else "8"
    assert [(t.id, t.price, t.amount) for t in out.trades] == [(good_id, Decimal("65000.1"), Decimal("0.5"))]
    counters = decoder.counters
    assert (counters.malformed, counters.trades, counters.frames) == (1, 1, 2)
    shown = "0" if (name, bad) == ("kraken", "-0") else bad  # the JSON integer -0 decodes as 0
    assert counters.last_error == f"trade {field} not a finite decimal above zero: {shown!r}"


@pytest.mark.parametrize("name", sorted(VENUE_FRAMES))
def test_a_nan_or_infinite_trade_price_is_refused_by_every_venue(name: str) -> None:
    # Binance and Kraken decoded prices straight into Decimal, which takes "NaN" and "Infinity".
    market, native, frame = VENUE_FRAMES[name]
    for bad in ("NaN", "Infinity", "sNaN"):
        decoder = VENUES[name].decoder(market, {native: "BTC-X"})
        out = Decoded()
        text = f'"{bad}"' if name == "kraken" else bad
        decoder.decode([frame([(7, text, "0.5")]), frame([(8, "65000.1", "0.5")])], 0, out)
        assert len(out.trades) == 1 and decoder.counters.malformed == 1
        assert "trade price" in (decoder.counters.last_error or "")


@pytest.mark.parametrize("name", sorted(set(VENUE_FRAMES) - {"binance"}))
def test_one_bad_trade_refuses_its_whole_frame_as_a_nan_does(name: str) -> None:
    market, native, frame = VENUE_FRAMES[name]
    decoder = VENUES[name].decoder(market, {native: "BTC-X"})
    out = Decoded()
    decoder.decode([frame([(7, "65000.1", "0.5"), (8, "-1", "0.5")]), frame([(9, "65000.2", "1")])], 0, out)
    assert [t.price for t in out.trades] == [Decimal("65000.2")]
    assert decoder.counters.malformed == 1 and "trade price" in (decoder.counters.last_error or "")


def test_a_refused_binance_trade_reports_no_gap_of_its_own() -> None:
    # The id rule runs after the check: the refused trade neither moves the last id nor reports a gap.
    decoder = VENUES["binance"].decoder("spot", {"BTCUSDT": "BTC-X"})
    out = Decoded()
    decoder.decode([binance([(7, "65000.1", "0.5")]), binance([(9, "0", "0.5")])], 0, out)
    decoder.decode([binance([(8, "65000.1", "0.5")])], 0, out)
    assert [t.id for t in out.trades] == ["7", "8"] and out.trade_gaps == []


def test_a_negative_funding_rate_still_decodes_beside_the_checked_trades() -> None:
    # Trades have their own checked table; the values a funding rate goes through still take a sign.
    decoder = VENUES["bybit"].decoder("linear", {"BTCUSDT": "BTC-X"})
    out = Decoded()
    ticker = b'{"topic":"tickers.BTCUSDT","type":"snapshot","ts":1,"data":{"fundingRate":"-0.0001"}}'
    decoder.decode([ticker, bybit([(1, "65000.1", "0.5")])], 0, out)
    assert out.derivatives[0].funding_rate == Decimal("-0.0001") and len(out.trades) == 1


async def test_the_normalizer_counts_the_refused_frame_and_publishes_the_good_trade(
    autojump_clock: trio.abc.Clock,
) -> None:
    raw: Bus[RawFrames] = Bus("raw")
    trades: Bus[Trade] = Bus("trades")
    received = trades.subscribe("storage", 8, Overflow.BLOCK).receiver()
    decoder = VENUES["okx"].decoder("spot", {"BTC-USDT": "BTC-USDT"})
    normalizer = Normalizer(raw.subscribe("normalizer", 8, Overflow.BLOCK), trades, {"okx-spot": decoder})
    frames = [okx([(7, "-1", "0.5")]), okx([(8, "65000.1", "0")]), okx([(9, "65000.1", "0.5")])]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(normalizer.run)
            await raw.publish([RawFrames("okx-spot", "okx", "spot", 1, frames)])
            batch = await received.receive()
            nursery.cancel_scope.cancel()
    assert [(t.id, str(t.price), str(t.amount)) for t in batch] == [("9", "65000.1", "0.5")]
    stats = normalizer.statistics().feeds["okx-spot"]
    assert (stats.frames, stats.malformed, stats.trades) == (3, 2, 1)
    assert stats.last_error == "trade amount not a finite decimal above zero: '0'"


# -- REST backfill parsers -----------------------------------------------------------------------------


def binance_rest(price: str, amount: str) -> list[Trade]:
    body = f'[{{"a":5,"p":"{price}","q":"{amount}","f":5,"l":5,"T":{T_MS},"m":false}}]'
    return parse_rest_agg_trades(body.encode(), "binance", "BTC-X", 0)


def bybit_rest(price: str, amount: str) -> list[Trade]:
    body = (
        '{"retCode":0,"retMsg":"OK","result":{"category":"linear","list":[{"execId":"e1","symbol":"BTCUSDT",'
        f'"price":"{price}","size":"{amount}","side":"Buy","time":"{T_MS}","isBlockTrade":false}}]}}}}'
    )
    return parse_recent_trades(body.encode(), "bybit", "BTC-X", 0)


def okx_rest(price: str, amount: str) -> list[Trade]:
    body = (
        '{"code":"0","msg":"","data":[{"instId":"BTC-USDT","tradeId":"5",'
        f'"px":"{price}","sz":"{amount}","side":"buy","ts":"{T_MS}"}}]}}'
    )
    return parse_history_trades(body.encode(), "okx", "BTC-X", 0)


def coinbase_rest(price: str, amount: str) -> list[Trade]:
    body = (
        '{"trades":[{"trade_id":"5","product_id":"BTC-USD",'
        f'"price":"{price}","size":"{amount}","side":"BUY","time":"2026-08-14T20:42:27.265123Z"}}]}}'
    )
    return parse_ticker(body.encode(), "coinbase", "BTC-X", 0, Values())


def kraken_rest(price: str, amount: str) -> list[Trade]:
    body = (
        '{"error":[],"result":{"XXBTZUSD":'
        f'[["{price}","{amount}",1700000000.123456,"b","m","",5]],"last":"1700000000123456789"}}}}'
    )
    return parse_trades(body.encode(), "kraken", "BTC-X", 0).trades


REST: dict[str, Callable[[str, str], list[Trade]]] = {
    "binance": binance_rest,
    "bybit": bybit_rest,
    "okx": okx_rest,
    "coinbase": coinbase_rest,
    "kraken": kraken_rest,
}


@pytest.mark.parametrize(("field", "bad"), [*BAD, ("price", "NaN"), ("amount", "Infinity")])
@pytest.mark.parametrize("name", sorted(REST))
def test_a_rest_trade_at_or_below_zero_refuses_the_page_naming_the_field(
    name: str, field: str, bad: str
) -> None:
    parse = REST[name]
    [trade] = parse("65000.1", "0.5")  # the same page with good values parses
    assert (trade.price, trade.amount) == (Decimal("65000.1"), Decimal("0.5"))
    with pytest.raises(ValueError, match=f"trade {field} not a finite decimal above zero: '{bad}'"):
        parse(*good_and_bad(field, bad))


def test_kraken_trades_in_another_key_order_or_as_strings_are_checked_the_same() -> None:
    # The one-pass path takes frames that begin `{"channel":"trade",`; others go through the envelope.
    decoder = VENUES["kraken"].decoder("spot", {"BTC/USD": "BTC-USD"})
    out = Decoded()
    frames = [
        kraken([(7, "-1.5", "0.5")]).replace(
            b'{"channel":"trade","type":"update",', b'{"type":"update","channel":"trade",'
        ),
        kraken([(8, '"65000.10"', "2")]).replace(
            b'{"channel":"trade","type":"update",', b'{"type":"update","channel":"trade",'
        ),
        kraken([(9, '"-65000.1"', "1")]),
        kraken([(10, "65000", '"0.25"')]),
    ]
    decoder.decode(frames, 0, out)
    assert [(t.id, str(t.price), str(t.amount)) for t in out.trades] == [
        ("8", "65000.10", "2"),
        ("10", "65000", "0.25"),
    ]
    assert decoder.counters.malformed == 2
    assert decoder.counters.last_error == "trade price not a finite decimal above zero: '-65000.1'"
