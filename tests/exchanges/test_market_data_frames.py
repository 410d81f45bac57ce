"""Ticker, derivatives and liquidation frames of Bybit and Binance, decoded exactly (PROTOCOLS §1.7, §3)."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from marketflow.exchanges import binance, bybit
from marketflow.exchanges.base import Decoded
from marketflow.exchanges.binance import rest as binance_rest
from marketflow.model import DerivativesTick, Liquidation, Ticker

D = Decimal

BYBIT_LINEAR_SNAPSHOT = (
    b'{"topic":"tickers.BTCUSDT","type":"snapshot","data":{"symbol":"BTCUSDT","tickDirection":"PlusTick",'
    b'"price24hPcnt":"0.017103","lastPrice":"17216.00","prevPrice24h":"16926.50","highPrice24h":"17281.50",'
    b'"lowPrice24h":"16915.00","prevPrice1h":"17238.00","markPrice":"17217.33","indexPrice":"17227.36",'
    b'"openInterest":"68744.761","openInterestValue":"1183601235.91","turnover24h":"1570383121.943499",'
    b'"volume24h":"91705.276","nextFundingTime":"1673280000000","fundingRate":"-0.000212",'
    b'"bid1Price":"17215.50","bid1Size":"84.489","ask1Price":"17216.00","ask1Size":"83.020"},'
    b'"cs":24987956059,"ts":1673272861686}'
)
BYBIT_LINEAR_DELTA = (
    b'{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","markPrice":"17217.40",'
    b'"bid1Price":"17215.00"},"cs":24987956060,"ts":1673272861786}'
)
BYBIT_SPOT = (
    b'{"topic":"tickers.BTCUSDT","ts":1673853746003,"type":"snapshot","cs":2588407389,"data":{'
    b'"symbol":"BTCUSDT","lastPrice":"21109.77","highPrice24h":"21426.99","lowPrice24h":"20575",'
    b'"prevPrice24h":"20704.93","volume24h":"6780.866843","turnover24h":"141946527.22907118",'
    b'"price24hPcnt":"0.0196","usdIndexPrice":"21120.2400136"}}'
)
BYBIT_LIQUIDATION = (
    b'{"topic":"allLiquidation.ROSEUSDT","type":"snapshot","ts":1739502303204,"data":[{"T":1739502302929,'
    b'"s":"ROSEUSDT","S":"Sell","v":"20000","p":"0.04499"},{"T":1739502302930,"s":"ROSEUSDT","S":"Buy",'
    b'"v":"10","p":"0.04500"}]}'
)


def _bybit(market: str, frames: list[bytes], symbols: dict[str, str]) -> Decoded:
    decoder = bybit.VENUE.decoder(market, symbols)
    out = Decoded()
    decoder.decode(frames, 7, out)
    return out


def test_bybit_linear_snapshot_gives_ticker_and_derivatives_exactly() -> None:
    out = _bybit("linear", [BYBIT_LINEAR_SNAPSHOT], {"BTCUSDT": "BTC-USDT-PERP"})
    ts = 1673272861686000
    assert out.tickers == [
        Ticker(
            "bybit", "BTC-USDT-PERP", ts, 7, D("17215.50"), D("84.489"), D("17216.00"), D("83.020"),
            D("17216.00"), D("91705.276"), snapshot=True,
        )
    ]  # fmt: skip
    assert out.derivatives == [
        DerivativesTick(
            "bybit", "BTC-USDT-PERP", ts, 7, D("17217.33"), D("17227.36"), D("-0.000212"),
            1673280000000000, D("68744.761"), D("1183601235.91"), snapshot=True,
        )
    ]  # fmt: skip
    assert str(out.tickers[0].bid) == "17215.50"


def test_bybit_linear_delta_carries_only_changed_fields() -> None:
    out = _bybit("linear", [BYBIT_LINEAR_DELTA], {"BTCUSDT": "BTC-USDT-PERP"})
    ts = 1673272861786000
    assert out.tickers == [Ticker("bybit", "BTC-USDT-PERP", ts, 7, bid=D("17215.00"))]
    assert out.derivatives == [DerivativesTick("bybit", "BTC-USDT-PERP", ts, 7, mark_price=D("17217.40"))]


def test_bybit_spot_ticker_has_no_derivatives_and_no_best_prices() -> None:
    out = _bybit("spot", [BYBIT_SPOT], {"BTCUSDT": "BTC-USDT"})
    assert out.derivatives == []
    assert out.tickers == [
        Ticker(
            "bybit", "BTC-USDT", 1673853746003000, 7, last=D("21109.77"), volume_24h=D("6780.866843"),
            snapshot=True,
        )
    ]  # fmt: skip


def test_bybit_all_liquidation_side_is_the_forced_orders() -> None:
    """Bybit's `S` is the liquidated position's side: `Buy` (a long) is closed by a sell order."""
    out = _bybit("linear", [BYBIT_LIQUIDATION], {"ROSEUSDT": "ROSE-USDT-PERP"})
    assert out.liquidations == [
        Liquidation(
            "bybit", "ROSE-USDT-PERP", "1739502302929:Sell:0.04499:20000", "buy", D("0.04499"), D("20000"),
            1739502302929000, 7,
        ),
        Liquidation(
            "bybit", "ROSE-USDT-PERP", "1739502302930:Buy:0.04500:10", "sell", D("0.04500"), D("10"),
            1739502302930000, 7,
        ),
    ]  # fmt: skip


def test_bybit_topics_and_connections() -> None:
    venue = bybit.VENUE
    plans = venue.connections("linear", ["BTCUSDT"], ["ticker", "derivatives", "liquidations"], 50)
    assert plans[0].topics == ("tickers.BTCUSDT", "allLiquidation.BTCUSDT")
    assert [venue.parse_topic("linear", t) for t in plans[0].topics] == [
        bybit.Topic("ticker", "BTCUSDT"),
        bybit.Topic("liquidations", "BTCUSDT"),
    ]
    assert venue.markets["spot"].channels == ("trades", "book", "ticker")


def test_bybit_bad_decimal_in_a_delta_is_malformed() -> None:
    bad = BYBIT_LINEAR_DELTA.replace(b'"17217.40"', b'"x1"')
    decoder = bybit.VENUE.decoder("linear", {"BTCUSDT": "BTC-USDT-PERP"})
    out = Decoded()
    decoder.decode([bad], 7, out)
    assert (out.tickers, out.derivatives, decoder.counters.malformed) == ([], [], 1)


# -- Binance ---------------------------------------------------------------------------------------------

USDM_BOOK_TICKER = (
    b'{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":9924360161244,"s":"BTCUSDT",'
    b'"b":"68005.00","B":"2.394","a":"68005.10","A":"0.857","T":1771263510337,"E":1771263510337}}'
)
SPOT_BOOK_TICKER = (
    b'{"stream":"btcusdt@bookTicker","data":{"u":400900217,"s":"BTCUSDT","b":"25.35190000",'
    b'"B":"31.21000000","a":"25.36520000","A":"40.66000000"}}'
)
TICKER_24H = (
    b'{"stream":"btcusdt@ticker","data":{"e":"24hrTicker","E":1672515782136,"s":"BTCUSDT","p":"0.0015",'
    b'"P":"250.00","w":"0.0018","c":"0.0025","Q":"10","o":"0.0010","h":"0.0025","l":"0.0010",'
    b'"v":"10000","q":"18","O":0,"C":1,"F":0,"L":18150,"n":18151}}'
)
MARK_PRICE = (
    b'{"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","E":1562305380000,"s":"BTCUSDT",'
    b'"p":"11794.15000000","i":"11784.62659091","P":"11784.25641265","r":"0.00038167","T":1562306400000}}'
)
FORCE_ORDER = (
    b'{"stream":"btcusdt@forceOrder","data":{"e":"forceOrder","E":1568014460893,"o":{"s":"BTCUSDT",'
    b'"S":"SELL","o":"LIMIT","f":"IOC","q":"0.014","p":"9910","ap":"9910","X":"FILLED","l":"0.014",'
    b'"z":"0.014","T":1568014460893}}}'
)


def _binance(market: str, frames: list[bytes]) -> Decoded:
    symbol = "BTC-USDT-PERP" if market == "usdm" else "BTC-USDT"
    decoder = binance.VENUE.decoder(market, {"BTCUSDT": symbol})
    out = Decoded()
    decoder.decode(frames, 7, out)
    return out


def test_binance_book_tickers_usdm_and_spot() -> None:
    usdm = _binance("usdm", [USDM_BOOK_TICKER]).tickers
    assert usdm == [
        Ticker(
            "binance",
            "BTC-USDT-PERP",
            1771263510337000,
            7,
            D("68005.00"),
            D("2.394"),
            D("68005.10"),
            D("0.857"),
        )
    ]
    # Spot book tickers carry no time: the receive time stands in.
    spot = _binance("spot", [SPOT_BOOK_TICKER]).tickers
    assert spot == [
        Ticker(
            "binance",
            "BTC-USDT",
            7,
            7,
            D("25.35190000"),
            D("31.21000000"),
            D("25.36520000"),
            D("40.66000000"),
        )
    ]
    assert str(spot[0].bid) == "25.35190000"


def test_binance_24h_ticker_gives_last_and_volume_only() -> None:
    assert _binance("spot", [TICKER_24H]).tickers == [
        Ticker("binance", "BTC-USDT", 1672515782136000, 7, last=D("0.0025"), volume_24h=D("10000"))
    ]


def test_binance_mark_price_and_force_order() -> None:
    out = _binance("usdm", [MARK_PRICE, FORCE_ORDER])
    assert out.derivatives == [
        DerivativesTick(
            "binance", "BTC-USDT-PERP", 1562305380000000, 7, D("11794.15000000"), D("11784.62659091"),
            D("0.00038167"), 1562306400000000,
        )
    ]  # fmt: skip
    assert out.liquidations == [
        Liquidation(
            "binance", "BTC-USDT-PERP", "1568014460893:SELL:9910:0.014", "sell", D("9910"), D("0.014"),
            1568014460893000, 7,
        )
    ]  # fmt: skip


def test_binance_open_interest_poll_is_declared_by_the_usdm_market() -> None:
    (poll,) = binance.VENUE.markets["usdm"].polls
    assert binance.VENUE.markets["spot"].polls == ()
    assert poll.channel == "derivatives"
    request = poll.request("BTCUSDT")
    assert (request.path, request.params, request.weight) == (
        "/fapi/v1/openInterest",
        {"symbol": "BTCUSDT"},
        1,
    )
    out = Decoded()
    poll.parse(
        b'{"openInterest":"10659.509","symbol":"BTCUSDT","time":1589437530011}', "BTC-USDT-PERP", 9, out
    )
    assert out.derivatives == [
        DerivativesTick("binance", "BTC-USDT-PERP", 1589437530011000, 9, open_interest=D("10659.509"))
    ]
    with pytest.raises(ValueError, match="openInterest answer not understood"):
        binance_rest.parse_open_interest(b'{"symbol":"BTCUSDT"}', "BTC-USDT-PERP", 9, Decoded())


def test_binance_usdm_routes_book_tickers_to_public_and_the_rest_to_market() -> None:
    plans = binance.VENUE.connections("usdm", ["BTCUSDT"], ["ticker", "derivatives", "liquidations"], 50)
    routed = {p.suffix: p.topics for p in plans}
    assert routed == {
        "/market": ("btcusdt@ticker", "btcusdt@markPrice@1s", "btcusdt@forceOrder"),
        "/public": ("btcusdt@bookTicker",),
    }
    parsed = [binance.VENUE.parse_topic("usdm", t) for p in plans for t in p.topics]
    assert [p.channel for p in parsed if p is not None] == ["ticker", "derivatives", "liquidations", "ticker"]
    spot = binance.VENUE.connections("spot", ["BTCUSDT"], ["trades", "ticker"], 50)
    assert spot[0].topics == ("btcusdt@aggTrade", "btcusdt@bookTicker", "btcusdt@ticker")


def test_binance_unknown_force_order_side_is_malformed() -> None:
    decoder = binance.VENUE.decoder("usdm", {"BTCUSDT": "BTC-USDT-PERP"})
    out = Decoded()
    decoder.decode([FORCE_ORDER.replace(b'"S":"SELL"', b'"S":"HOLD"')], 7, out)
    assert (out.liquidations, decoder.counters.malformed) == ([], 1)
    assert msgspec.json.decode(FORCE_ORDER)["data"]["o"]["S"] == "SELL"


# -- OKX -------------------------------------------------------------------------------------------------

OKX_TICKERS = (
    b'{"arg":{"channel":"tickers","instId":"BTC-USDT-SWAP"},"data":[{"instType":"SWAP","instId":"BTC-USDT-SWAP",'
    b'"last":"9999.99","lastSz":"0.1","askPx":"9999.99","askSz":"11","bidPx":"8888.88","bidSz":"5",'
    b'"open24h":"9000","high24h":"10000","low24h":"8888.88","volCcy24h":"2222","vol24h":"2222",'
    b'"sodUtc0":"2222","sodUtc8":"2222","ts":"1597026383085"}]}'
)
OKX_MARK = (
    b'{"arg":{"channel":"mark-price","instId":"BTC-USDT-SWAP"},"data":[{"instType":"SWAP",'
    b'"instId":"BTC-USDT-SWAP","markPx":"42310.6","ts":"1630049139746"}]}'
)
OKX_INDEX = (
    b'{"arg":{"channel":"index-tickers","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT","idxPx":"42310.60",'
    b'"high24h":"1","low24h":"1","open24h":"1","sodUtc0":"1","sodUtc8":"1","ts":"1597026383085"}]}'
)
OKX_FUNDING = (
    b'{"arg":{"channel":"funding-rate","instId":"BTC-USDT-SWAP"},"data":[{"fundingRate":"0.0001875391284828",'
    b'"fundingTime":"1700726400000","instId":"BTC-USDT-SWAP","instType":"SWAP","method":"current_period",'
    b'"nextFundingRate":"","nextFundingTime":"1700755200000","ts":"1700724675402"}]}'
)
OKX_OI = (
    b'{"arg":{"channel":"open-interest","instId":"BTC-USDT-SWAP"},"data":[{"instId":"BTC-USDT-SWAP",'
    b'"instType":"SWAP","oi":"2216113.01000000","oiCcy":"22161.13","oiUsd":"1061617181.0","ts":"1700724675402"}]}'
)
OKX_LIQUIDATIONS = (
    b'{"arg":{"channel":"liquidation-orders","instType":"SWAP"},"data":[{"details":[{"bkLoss":"0",'
    b'"bkPx":"0.007831","ccy":"","posSide":"short","side":"buy","sz":"13","ts":"1692266434010"}],'
    b'"instFamily":"IOST-USDT","instId":"IOST-USDT-SWAP","instType":"SWAP","uly":"IOST-USDT"},'
    b'{"details":[{"bkLoss":"0","bkPx":"42000.1","ccy":"","posSide":"long","side":"sell","sz":"2",'
    b'"ts":"1692266434011"}],"instFamily":"BTC-USDT","instId":"BTC-USDT-SWAP","instType":"SWAP","uly":"BTC-USDT"}]}'
)


def test_okx_channels_decode_to_partial_records_exactly() -> None:
    from marketflow.exchanges import okx

    decoder = okx.VENUE.decoder("swap", {"BTC-USDT-SWAP": "BTC-USDT-PERP"})
    out = Decoded()
    decoder.decode([OKX_TICKERS, OKX_MARK, OKX_INDEX, OKX_FUNDING, OKX_OI, OKX_LIQUIDATIONS], 7, out)
    assert out.tickers == [
        Ticker("okx", "BTC-USDT-PERP", 1597026383085000, 7, D("8888.88"), D("5"), D("9999.99"), D("11"),
               D("9999.99"), D("2222"))
    ]  # fmt: skip
    assert out.derivatives == [
        DerivativesTick("okx", "BTC-USDT-PERP", 1630049139746000, 7, mark_price=D("42310.6")),
        DerivativesTick("okx", "BTC-USDT-PERP", 1597026383085000, 7, index_price=D("42310.60")),
        DerivativesTick(
            "okx", "BTC-USDT-PERP", 1700724675402000, 7, funding_rate=D("0.0001875391284828"),
            next_funding_time=1700726400000000,
        ),
        DerivativesTick(
            "okx", "BTC-USDT-PERP", 1700724675402000, 7, open_interest=D("2216113.01000000"),
            open_interest_value=D("1061617181.0"),
        ),
    ]  # fmt: skip
    # Only the connection's own instrument of the whole type's stream; side is the order's.
    assert out.liquidations == [
        Liquidation("okx", "BTC-USDT-PERP", "1692266434011:sell/long:42000.1:2", "sell", D("42000.1"), D("2"),
                    1692266434011000, 7)
    ]  # fmt: skip
    assert decoder.counters.malformed == 0


def test_okx_topics_connections_and_the_inst_type_subscription() -> None:
    from marketflow.exchanges import okx

    venue = okx.VENUE
    (plan,) = venue.connections(
        "swap", ["BTC-USDT-SWAP", "BTC-USD-SWAP"], ["ticker", "derivatives", "liquidations"], 400
    )
    assert plan.topics == (
        "tickers:BTC-USDT-SWAP", "tickers:BTC-USD-SWAP",
        "mark-price:BTC-USDT-SWAP", "funding-rate:BTC-USDT-SWAP", "open-interest:BTC-USDT-SWAP",
        "index-tickers:BTC-USDT",
        "mark-price:BTC-USD-SWAP", "funding-rate:BTC-USD-SWAP", "open-interest:BTC-USD-SWAP",
        "index-tickers:BTC-USD",
        "liquidation-orders:SWAP",
    )  # fmt: skip
    assert {venue.parse_topic("swap", t).channel for t in plan.topics} == {  # type: ignore[union-attr]
        "ticker",
        "derivatives",
        "liquidations",
    }
    requests = venue.session(
        "swap", ["liquidation-orders:SWAP", "mark-price:BTC-USDT-SWAP"]
    ).subscribe_requests()
    assert [msgspec.json.decode(r.payload)["args"] for r in requests] == [
        [{"channel": "liquidation-orders", "instType": "SWAP"}],
        [{"channel": "mark-price", "instId": "BTC-USDT-SWAP"}],
    ]
    assert venue.markets["spot"].channels == ("trades", "book", "ticker")
    futures = venue.connections("futures", ["BTC-USD-250627"], ["derivatives"], 400)[0].topics
    assert "funding-rate:BTC-USD-250627" not in futures  # futures have no funding
