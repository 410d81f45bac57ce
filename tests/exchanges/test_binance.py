"""Binance spot and USD-M parsing from recorded-shape frames (PROTOCOLS.md §2, §3)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from marketflow.exchanges import binance
from marketflow.exchanges.base import Ack, DataFrame, Decoded, Reconnect, TradeGap, UnknownControl
from marketflow.model import BookUpdate, Trade

SPOT_AGG = (
    b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1738534577231,"s":"BTCUSDT","a":3412663610,'
    b'"p":"97674.73000000","q":"0.00062000","f":4504797980,"l":4504797980,"T":1738534577231,"m":false,"M":true}}'
)
USDM_AGG = (
    b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1771263510195,"a":3141966230,"s":"BTCUSDT",'
    b'"p":"68005.00","q":"2.695","nq":"2.695","f":7297376181,"l":7297376207,"T":1771263510041,"m":true}}'
)
SPOT_DEPTH = (
    b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1723025111169,"s":"BTCUSDT",'
    b'"U":49981777515,"u":49981777539,"b":[["57261.83000000","0.00096000"],["57249.36000000","0.00000000"]],'
    b'"a":[["57270.00000000","1.20000000"]]}}'
)
USDM_DEPTH = (
    b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":123456789,"T":123456788,"s":"BTCUSDT",'
    b'"U":157,"u":160,"pu":149,"b":[["0.0024","10"]],"a":[["0.0026","100"]]}}'
)


def decode(market: str, frames: list[bytes]) -> tuple[Decoded, binance.FrameDecoder]:
    symbol = "BTC-USDT-PERP" if market == "usdm" else "BTC-USDT"
    decoder = binance.FrameDecoder("binance", market, {"BTCUSDT": symbol})
    out = Decoded()
    decoder.decode(frames, 7, out)
    return out, decoder


def test_spot_agg_trade_exact() -> None:
    out, _ = decode("spot", [SPOT_AGG])
    assert out.trades == [
        Trade(
            "binance",
            "BTC-USDT",
            "3412663610",
            Decimal("97674.73000000"),
            Decimal("0.00062000"),
            "buy",
            1738534577231000,
            7,
        )
    ]
    assert str(out.trades[0].price) == "97674.73000000"


def test_usdm_agg_trade_buyer_maker_is_a_sell() -> None:
    out, _ = decode("usdm", [USDM_AGG])
    assert [(t.symbol, t.id, str(t.price), str(t.amount), t.side, t.ts) for t in out.trades] == [
        ("BTC-USDT-PERP", "3141966230", "68005.00", "2.695", "sell", 1771263510041000)
    ]


def test_depth_updates_both_markets() -> None:
    out, _ = decode("spot", [SPOT_DEPTH])
    assert out.books == [
        BookUpdate(
            "binance",
            "BTC-USDT",
            False,
            49981777515,
            49981777539,
            None,
            [(Decimal("57261.83000000"), Decimal("0.00096000")), (Decimal("57249.36000000"), Decimal("0"))],
            [(Decimal("57270.00000000"), Decimal("1.20000000"))],
            1723025111169000,
            7,
        )
    ]
    usdm, _ = decode("usdm", [USDM_DEPTH])
    (update,) = usdm.books
    assert (update.first_id, update.last_id, update.prev_id, update.ts) == (157, 160, 149, 123456788000)


def agg(a: int, t: int = 1000) -> bytes:
    return json.dumps(
        {
            "stream": "btcusdt@aggTrade",
            "data": {
                "e": "aggTrade",
                "E": t,
                "s": "BTCUSDT",
                "a": a,
                "p": "1.0",
                "q": "2",
                "f": a,
                "l": a,
                "T": t,
                "m": False,
                "M": True,
            },
        }
    ).encode()


def test_duplicates_dropped_and_gaps_reported() -> None:
    out, decoder = decode("spot", [agg(10, 1000), agg(11, 1001), agg(11, 1001), agg(10, 1000), agg(15, 1005)])
    assert [t.id for t in out.trades] == ["10", "11", "15"]
    assert decoder.counters.duplicates == 2
    assert out.trade_gaps == [TradeGap("binance", "spot", "BTC-USDT", "BTCUSDT", 12, 15, 1001000, 1005000)]


@pytest.mark.parametrize(
    "frame",
    [
        b'{"stream":"btcusdt@aggTrade","data":{"a":"x"}}',
        b'{"stream":',
        b"[]",
        b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"U":1,"u":2,"b":[["1"]],"a":[]}}',
    ],
)
def test_malformed_counted(frame: bytes) -> None:
    out, decoder = decode("spot", [frame, SPOT_AGG])
    assert len(out.trades) == 1 and decoder.counters.malformed == 1


def test_unknown_symbol_and_stream_kinds() -> None:
    out, decoder = decode(
        "spot", [SPOT_AGG.replace(b"btcusdt@", b"dogeusdt@"), SPOT_AGG.replace(b"@aggTrade", b"@kline_1m")]
    )
    assert out.trades == [] and decoder.counters.unknown_topics == 1 and decoder.counters.ignored == 1


def test_connections_route_usdm_and_shard_past_1024() -> None:
    plans = binance.connections("usdm", ["BTCUSDT"], ("trades", "book"), 50, "ws://127.0.0.1:9/usdm")
    assert [(p.suffix, p.url, p.topics) for p in plans] == [
        ("/market", "ws://127.0.0.1:9/usdm/market/stream", ("btcusdt@aggTrade",)),
        ("/public", "ws://127.0.0.1:9/usdm/public/stream", ("btcusdt@depth@100ms",)),
    ]
    natives = [f"S{i}USDT" for i in range(600)]
    spot = binance.connections("spot", natives, ("trades", "book"), 50, None)
    assert [p.suffix for p in spot] == ["", "#2"]
    assert [len(p.topics) for p in spot] == [1024, 176]
    assert spot[0].url == "wss://stream.binance.com:9443/stream"
    assert set(spot[0].natives) | set(spot[1].natives) == set(natives)


def test_subscribe_messages_and_acks() -> None:
    session = binance.Session("spot", [f"s{i}usdt@aggTrade" for i in range(150)])
    requests = session.subscribe_requests()
    assert [len(r.topics) for r in requests] == [100, 50]
    assert json.loads(requests[1].payload) == {
        "method": "SUBSCRIBE",
        "params": list(requests[1].topics),
        "id": 2,
    }
    assert session.send_interval_s == 0.25 and binance.Session("usdm", []).send_interval_s == 0.125
    assert session.control(b'{"result":null,"id":2}') == Ack("2", True, "")
    assert session.control(b'{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":3}') == Ack(
        "3", False, "code 2: Invalid request: invalid stream"
    )
    shutdown = b'{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1}}'
    assert not session.is_data(shutdown)
    assert session.control(shutdown) == Reconnect("serverShutdown")
    assert session.control(b'{"e":"serverShutdown","E":1}') == Reconnect("serverShutdown")
    assert isinstance(session.control(b"nope"), UnknownControl)
    # A data frame whose keys come in another order is recognised as data by the control decoder.
    reordered = b'{"data":{"e":"aggTrade"},"stream":"btcusdt@aggTrade"}'
    assert not session.is_data(reordered) and session.control(reordered) == DataFrame()
    assert session.heartbeat() is None and session.resubscribe_requests(["x"]) == []


def test_rest_parsers() -> None:
    depth = binance.parse_rest_depth(
        b'{"lastUpdateId":1027024,"E":1589436922972,"T":1589436922959,"bids":[["4.00000000","431.00000000"]],'
        b'"asks":[["4.00000200","12.00000000"]]}',
        "binance",
        "BTC-USDT-PERP",
        5,
    )
    assert (depth.snapshot, depth.first_id, depth.last_id, depth.ts) == (
        True,
        1027024,
        1027024,
        1589436922959000,
    )
    assert depth.bids == [(Decimal("4.00000000"), Decimal("431.00000000"))]
    trades = binance.parse_rest_agg_trades(
        b'[{"a":26129,"p":"0.01633102","q":"4.70443515","f":27781,"l":27781,"T":1498793709153,"m":true,"M":true}]',
        "binance",
        "BTC-USDT",
        5,
    )
    assert [(t.id, str(t.price), t.side) for t in trades] == [("26129", "0.01633102", "sell")]
    assert binance.depth_weight("spot", 1000) == 50 and binance.depth_weight("usdm", 1000) == 20


def test_depth_prices_are_shared_objects_across_events() -> None:
    # The book keys levels by price: one Decimal object per price string keeps its hash computed once.
    out, _ = decode("usdm", [USDM_DEPTH, USDM_DEPTH.replace(b'"u":160,"pu":149', b'"u":161,"pu":160')])
    first, second = out.books
    assert second.bids[0][0] is first.bids[0][0] == Decimal("0.0024")
    assert second.asks == [(Decimal("0.0026"), Decimal("100"))]


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-inf", "sNaN"])
def test_a_depth_price_that_is_no_finite_decimal_rejects_the_event(bad: str) -> None:
    # A NaN price would make every later comparison in the book raise (InvalidOperation).
    out, decoder = decode("usdm", [USDM_DEPTH.replace(b'"0.0024"', json.dumps(bad).encode()), USDM_DEPTH])
    assert len(out.books) == 1 and decoder.counters.malformed == 1


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-inf", "sNaN", "-100", "-0"])
def test_a_depth_amount_that_is_no_finite_non_negative_decimal_rejects_the_event(bad: str) -> None:
    # msgspec decodes "NaN" or "-100" into a Decimal amount: the decoder refuses the event itself.
    frame = USDM_DEPTH.replace(b'"100"', json.dumps(bad).encode(), 1)
    assert frame != USDM_DEPTH
    out, decoder = decode("usdm", [frame, USDM_DEPTH])
    assert len(out.books) == 1 and decoder.counters.malformed == 1
    assert "book amount not a finite non-negative decimal" in (decoder.counters.last_error or "")


@pytest.mark.parametrize("bad", ['"NaN"', '"-1"', '"Infinity"'])
@pytest.mark.parametrize("where", [0, 1])
def test_a_rest_snapshot_with_a_bad_level_is_refused_with_the_reason(bad: str, where: int) -> None:
    level = [bad, '"1"'] if where == 0 else ['"0.0024"', bad]
    body = f'{{"lastUpdateId":7,"bids":[[{level[0]},{level[1]}]],"asks":[]}}'.encode()
    with pytest.raises(ValueError, match="not a finite non-negative decimal"):
        binance.parse_rest_depth(body, "binance", "BTC-USDT", 5)


def test_depth_frames_decode_alike_whatever_the_key_order() -> None:
    # The usual order takes the one-pass path; data before stream takes the envelope path: same update.
    doc = json.loads(USDM_DEPTH)
    reordered = json.dumps({"data": doc["data"], "stream": doc["stream"]}).encode()
    out, decoder = decode("usdm", [USDM_DEPTH, reordered])
    usual, other = out.books
    assert usual == other and (usual.first_id, usual.last_id, usual.prev_id) == (157, 160, 149)
    assert decoder.counters.book_updates == 2
