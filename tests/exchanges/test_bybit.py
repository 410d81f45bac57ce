"""Bybit v5 parsing from real-shaped frames (PROTOCOLS.md §1), both categories."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from marketflow.exchanges import bybit
from marketflow.exchanges.base import Ack, DataFrame, Decoded, Pong, UnknownControl, is_data_frame
from marketflow.model import Trade
from marketflow.pipeline import backfill

LINEAR_DOC = (
    b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,'
    b'"data":[{"T":1672304486865,"s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50","L":"PlusTick",'
    b'"i":"20f43950-d8dd-5b31-9112-a178eb6023af","BT":false,"seq":1783284617}]}'
)
LINEAR_LIVE = (
    b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1758841135824,"data":[{"T":1758841135823,'
    b'"s":"BTCUSDT","S":"Buy","v":"0.020","p":"109378.90","L":"ZeroPlusTick",'
    b'"i":"2a74ac78-691c-5b54-9dbe-5aafe8364627","BT":false,"RPI":false,"seq":457514743450}]}'
)
SPOT_LIVE = (
    b'{"topic":"publicTrade.BTCUSDT","ts":1789875217841,"type":"snapshot","data":[{"BT":false,"RPI":false,'
    b'"S":"Sell","T":1789875217840,"i":"2290000001211680903","p":"80413.3","s":"BTCUSDT",'
    b'"seq":114263055846,"v":"0.06"},{"BT":false,"RPI":false,"S":"Buy","T":1789875217840,'
    b'"i":"2290000001211680919","p":"80413.4","s":"BTCUSDT","seq":114263055850,"v":"0.004904"}]}'
)


def decode(
    market: str, frames: list[bytes], symbols: dict[str, str] | None = None
) -> tuple[list[Trade], bybit.FrameDecoder]:
    perp = market == "linear"
    decoder = bybit.FrameDecoder(
        "bybit", market, symbols or {"BTCUSDT": "BTC-USDT-PERP" if perp else "BTC-USDT"}
    )
    out = Decoded()
    decoder.decode(frames, 123, out)
    return out.trades, decoder


def test_linear_doc_frame_exact() -> None:
    trades, decoder = decode("linear", [LINEAR_DOC])
    assert trades == [
        Trade(
            "bybit",
            "BTC-USDT-PERP",
            "20f43950-d8dd-5b31-9112-a178eb6023af",
            Decimal("16578.50"),
            Decimal("0.001"),
            "buy",
            1672304486865000,
            123,
        )
    ]
    # The exchange's string survives exactly, trailing zero included.
    assert str(trades[0].price) == "16578.50"
    assert decoder.counters.trades == 1 and decoder.counters.malformed == 0


def test_linear_live_frame_with_rpi_field() -> None:
    trades, _ = decode("linear", [LINEAR_LIVE])
    assert [(t.id, str(t.price), str(t.amount), t.side) for t in trades] == [
        ("2a74ac78-691c-5b54-9dbe-5aafe8364627", "109378.90", "0.020", "buy")
    ]


def test_spot_frame_several_trades_ids_stay_strings() -> None:
    trades, _ = decode("spot", [SPOT_LIVE])
    assert [(t.symbol, t.id, str(t.price), str(t.amount), t.side, t.ts) for t in trades] == [
        ("BTC-USDT", "2290000001211680903", "80413.3", "0.06", "sell", 1789875217840000),
        ("BTC-USDT", "2290000001211680919", "80413.4", "0.004904", "buy", 1789875217840000),
    ]
    # Above 2^53: a float would have rounded it.
    assert int(trades[0].id) > 2**53 and isinstance(trades[0].id, str)


@pytest.mark.parametrize(
    "frame",
    [
        b'{"topic":"publicTrade.BTCUSDT","ts":1,"data":[{"T":1,"s":"BTCUSDT","S":"Up","v":"1","p":"2","i":"x"}]}',
        b'{"topic":"publicTrade.BTCUSDT","ts":1,"data":[{"T":1,"s":"BTCUSDT","S":"Buy","v":"1","p":"abc","i":"x"}]}',
        b'{"topic":"publicTrade.BTCUSDT","ts":1,"data":[{"T":1,"s":"BTCUSDT","v":"1","p":"2","i":"x"}]}',
        b'{"topic":"publicTrade.BTCUSDT",',
        b"not json at all",
        b"\x00\x01\x02",
    ],
)
def test_malformed_frames_are_counted_not_fatal(frame: bytes) -> None:
    trades, decoder = decode("spot", [frame, SPOT_LIVE])
    assert len(trades) == 2  # the good frame after the bad one still counts
    assert decoder.counters.malformed == 1
    assert decoder.counters.last_error


def test_unknown_symbol_and_other_topics_are_counted() -> None:
    other = SPOT_LIVE.replace(b"publicTrade.BTCUSDT", b"publicTrade.DOGEUSDT")
    kline = b'{"topic":"kline.1.BTCUSDT","ts":1,"type":"snapshot","data":[]}'
    trades, decoder = decode("spot", [other, kline])
    assert trades == []
    assert decoder.counters.unknown_topics == 1
    assert decoder.counters.ignored == 1


def test_subscribe_requests_chunk_by_ten_with_ids() -> None:
    natives = [f"SYM{i}USDT" for i in range(23)]
    session = bybit.Session("spot", [bybit.trade_topic(n) for n in natives])
    requests = session.subscribe_requests()
    assert [len(r.topics) for r in requests] == [10, 10, 3]
    assert len({r.req_id for r in requests}) == 3
    first = json.loads(requests[0].payload)
    assert first == {"req_id": requests[0].req_id, "op": "subscribe", "args": list(requests[0].topics)}
    assert requests[2].topics[-1] == "publicTrade.SYM22USDT"


def test_is_data_and_pongs_in_every_shape() -> None:
    session = bybit.Session("linear", ["publicTrade.BTCUSDT"])
    assert session.is_data(LINEAR_DOC)
    spot_pong = b'{"success":true,"ret_msg":"pong","conn_id":"0970e817","op":"ping"}'
    linear_pong = b'{"success":true,"ret_msg":"pong","conn_id":"4657","req_id":"","op":"ping"}'
    option_pong = b'{"args":["1672916271846"],"op":"pong"}'
    for frame in (spot_pong, linear_pong, option_pong):
        assert not session.is_data(frame)
        assert isinstance(session.control(frame), Pong)


def test_acks_success_and_rejections() -> None:
    session = bybit.Session("spot", ["publicTrade.BTCUSDT"])
    ok_spot = b'{"success":true,"ret_msg":"subscribe","conn_id":"2324","req_id":"sub-1","op":"subscribe"}'
    assert session.control(ok_spot) == Ack("sub-1", True, "subscribe", ())
    ok_linear = b'{"success":true,"ret_msg":"","conn_id":"3cd8","req_id":"","op":"subscribe"}'
    assert session.control(ok_linear) == Ack(None, True, "", ())
    too_many = b'{"success":false,"ret_msg":"args size >10","conn_id":"x","op":"subscribe"}'
    assert session.control(too_many) == Ack(None, False, "args size >10", ())
    unknown = (
        b'{"success":false,"ret_msg":"error:handler not found,topic:publicTrade.NOTASYMBOL",'
        b'"conn_id":"x","req_id":"sub-2","op":"subscribe"}'
    )
    ack = session.control(unknown)
    assert ack == Ack(
        "sub-2", False, "error:handler not found,topic:publicTrade.NOTASYMBOL", ("publicTrade.NOTASYMBOL",)
    )


def test_unknown_control_frames() -> None:
    session = bybit.Session("spot", ["publicTrade.BTCUSDT"])
    assert isinstance(session.control(b"garbage"), UnknownControl)
    assert isinstance(session.control(b'{"op":"auth","success":true}'), UnknownControl)
    # A data frame whose keys come in another order is recognised as data by the control decoder.
    reordered = b'{"ts":1,"topic":"publicTrade.BTCUSDT","type":"snapshot","data":[]}'
    assert not session.is_data(reordered)
    assert isinstance(session.control(reordered), DataFrame)
    assert is_data_frame(session, reordered)


def test_ws_url_override_and_unknown_market() -> None:
    assert bybit.ws_url("spot") == "wss://stream.bybit.com/v5/public/spot"
    assert bybit.ws_url("linear", "ws://127.0.0.1:9/v5/public/linear") == "ws://127.0.0.1:9/v5/public/linear"
    with pytest.raises(ValueError, match="no market 'inverse'"):
        bybit.ws_url("inverse")


SPOT_BOOK_SNAPSHOT = (
    b'{"topic":"orderbook.50.ETHUSDT","ts":1789875210000,"type":"snapshot","data":{"s":"ETHUSDT",'
    b'"b":[["2191.5","3.25"],["2191.4","1.0"],["2191.0","0.5"]],"a":[["2191.6","2.0"],["2191.7","4.0"]],'
    b'"u":219167606,"seq":181840388171}}'
)
SPOT_BOOK_DELTA = (
    b'{"topic":"orderbook.50.ETHUSDT","ts":1789875210020,"type":"delta","data":{"s":"ETHUSDT",'
    b'"b":[["2191.5","0.0"],["2191.2","9.0"]],"a":[],"u":219167607,"seq":181840388311}}'
)


def test_book_snapshot_delta_and_restart() -> None:
    decoder = bybit.FrameDecoder("bybit", "spot", {"ETHUSDT": "ETH-USDT"})
    out = Decoded()
    restart = SPOT_BOOK_DELTA.replace(b'"u":219167607', b'"u":1')
    decoder.decode([SPOT_BOOK_SNAPSHOT, SPOT_BOOK_DELTA, restart], 9, out)
    snap, delta, again = out.books
    assert (snap.snapshot, snap.first_id, snap.last_id, snap.prev_id) == (True, 219167606, 219167606, None)
    assert snap.bids[0] == (Decimal("2191.5"), Decimal("3.25")) and snap.ts == 1789875210000000
    assert (delta.snapshot, delta.last_id, delta.asks) == (False, 219167607, [])
    assert delta.bids == [(Decimal("2191.5"), Decimal("0.0")), (Decimal("2191.2"), Decimal("9.0"))]
    assert again.snapshot is True  # u == 1: the service restarted, the message replaces the book


def test_trades_deduplicated_and_backfill_admission() -> None:
    trades, decoder = decode("spot", [SPOT_LIVE, SPOT_LIVE])
    assert len(trades) == 2 and decoder.counters.duplicates == 2
    assert decoder.last_ts["BTCUSDT"] == 1789875217840000
    rest = (
        b'{"retCode":0,"retMsg":"OK","result":{"category":"spot","list":['
        b'{"execId":"2290000001211680950","symbol":"BTCUSDT","price":"80413.5","size":"0.1","side":"Buy",'
        b'"time":"1789875217900","isBlockTrade":false},'
        b'{"execId":"2290000001211680919","symbol":"BTCUSDT","price":"80413.4","size":"0.004904","side":"Buy",'
        b'"time":"1789875217840","isBlockTrade":false},'
        b'{"execId":"2290000001211600000","symbol":"BTCUSDT","price":"80400.0","size":"1","side":"Sell",'
        b'"time":"1789875200000","isBlockTrade":false}]},"retExtInfo":{},"time":1789875218000}'
    )
    fetched = bybit.parse_recent_trades(rest, "bybit", "BTC-USDT", 5)
    assert [t.id for t in fetched] == ["2290000001211600000", "2290000001211680919", "2290000001211680950"]
    admitted = decoder.admit_backfill("BTCUSDT", fetched, since_ts=1789875210000000)
    # Already seen: dropped; older than the disconnect margin: dropped; new: admitted, and only once.
    assert [(t.id, str(t.price), t.side) for t in admitted] == [("2290000001211680950", "80413.5", "buy")]
    assert decoder.admit_backfill("BTCUSDT", fetched, since_ts=0) == [fetched[0]]
    with pytest.raises(ValueError, match="retCode 10001: params error"):
        bybit.parse_recent_trades(b'{"retCode":10001,"retMsg":"params error","result":{}}', "bybit", "X", 1)


def test_resubscribe_is_unsubscribe_then_subscribe() -> None:
    session = bybit.Session("linear", ["orderbook.50.BTCUSDT"])
    ops = [json.loads(r.payload)["op"] for r in session.resubscribe_requests(["orderbook.50.BTCUSDT"])]
    assert ops == ["unsubscribe", "subscribe"]


def trade_frame(ms: int, *ids: int) -> bytes:
    """A linear BTCUSDT trade frame: one buy of 1 at 100 at `ms` per id (`id-<n>`)."""
    data = ",".join(f'{{"T":{ms},"s":"BTCUSDT","S":"Buy","v":"1","p":"100","i":"id-{i}"}}' for i in ids)
    head = '{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1700000000000,"data":['
    return f"{head}{data}]}}".encode()


def test_duplicate_memory_is_bounded_in_two_generations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bybit.frames, "RECENT_IDS", 3)
    decoder = bybit.FrameDecoder("bybit", "linear", {"BTCUSDT": "BTC-USDT-PERP"})

    def frame(*ids: int) -> bytes:
        return trade_frame(1700000000000, *ids)

    out = Decoded()
    decoder.decode([frame(1, 2, 3), frame(4, 5), frame(1), frame(6), frame(4)], 0, out)
    # 1–3 fill the first generation; 4–6 the second; 4 is still known; 1 was known when it came again.
    assert [t.id for t in out.trades] == ["id-1", "id-2", "id-3", "id-4", "id-5", "id-6"]
    assert decoder.counters.duplicates == 2
    out = Decoded()
    decoder.decode([frame(7, 8, 9), frame(1)], 0, out)  # two generations later, id-1 is forgotten
    assert [t.id for t in out.trades] == ["id-7", "id-8", "id-9", "id-1"]


def test_duplicate_memory_turns_over_by_exchange_time() -> None:
    """A quiet symbol keeps ids for RECENT_SPAN_US of exchange time, not RECENT_IDS of them: every id
    backfill could bring back (younger than the disconnect less its 10 s margin) is still known."""
    decoder = bybit.FrameDecoder("bybit", "linear", {"BTCUSDT": "BTC-USDT-PERP"})
    span_ms = bybit.RECENT_SPAN_US // 1000
    assert span_ms > backfill.CLOCK_MARGIN_US // 1000

    t0 = 1_700_000_000_000
    out = Decoded()
    # One trade a second for three spans: the generations turn over by time, long before RECENT_IDS.
    decoder.decode([trade_frame(t0 + s * 1000, s) for s in range(3 * span_ms // 1000)], 0, out)
    recent = decoder._seen["BTCUSDT"]
    assert len(recent.current) + len(recent.previous) <= 2 * span_ms // 1000 + 1
    newest = t0 + (3 * span_ms // 1000 - 1) * 1000
    # Every id of the last span is known: sent again, all are duplicates; the first ones are forgotten.
    again = [
        trade_frame(t0 + s * 1000, s) for s in range(3 * span_ms // 1000) if t0 + s * 1000 >= newest - span_ms
    ]
    out = Decoded()
    decoder.decode(again, 0, out)
    assert out.trades == [] and decoder.counters.duplicates == len(again)
    out = Decoded()
    decoder.decode([trade_frame(t0, 0)], 0, out)
    assert [t.id for t in out.trades] == ["id-0"]


@pytest.mark.parametrize("bad", ["abc", "NaN", "Infinity", ""])
def test_a_bad_decimal_rejects_the_whole_frame(bad: str) -> None:
    decoder = bybit.FrameDecoder("bybit", "linear", {"BTCUSDT": "BTC-USDT-PERP"})
    good = '{"T":1700000000000,"s":"BTCUSDT","S":"Buy","v":"1","p":"100.5","i":"a"}'
    wrong = f'{{"T":1700000000000,"s":"BTCUSDT","S":"Buy","v":"1","p":"{bad}","i":"b"}}'
    frame = f'{{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[{good},{wrong}]}}'.encode()
    out = Decoded()
    decoder.decode([frame], 0, out)
    assert out.trades == [] and decoder.counters.malformed == 1


def test_equal_decimal_strings_share_one_object_and_stay_exact() -> None:
    decoder = bybit.FrameDecoder("bybit", "linear", {"BTCUSDT": "BTC-USDT-PERP"})
    rows = ",".join(
        f'{{"T":1700000000000,"s":"BTCUSDT","S":"Sell","v":"0.0100","p":"65000.10","i":"x{i}"}}'
        for i in range(3)
    )
    out = Decoded()
    decoder.decode([f'{{"topic":"publicTrade.BTCUSDT","data":[{rows}]}}'.encode()], 0, out)
    prices = [t.price for t in out.trades]
    assert [str(p) for p in prices] == ["65000.10"] * 3 and str(out.trades[0].amount) == "0.0100"
    assert prices[0] is prices[1] is prices[2]


def test_the_decimal_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bybit.frames, "DECIMAL_INTERN_MAX", 10)
    decoder = bybit.FrameDecoder("bybit", "linear", {"BTCUSDT": "BTC-USDT-PERP"})
    rows = ",".join(
        f'{{"T":1700000000000,"s":"BTCUSDT","S":"Sell","v":"1","p":"{100 + i}.5","i":"x{i}"}}'
        for i in range(35)
    )
    out = Decoded()
    decoder.decode([f'{{"topic":"publicTrade.BTCUSDT","data":[{rows}]}}'.encode()], 0, out)
    # Every price exact, however often the table started over; never more than its bound held.
    assert [str(t.price) for t in out.trades] == [f"{100 + i}.5" for i in range(35)]
    assert 0 < len(decoder._trade_values) <= 10


def test_book_prices_are_shared_objects_across_messages() -> None:
    # The book keys levels by price: one Decimal object per price string keeps its hash computed once.
    decoder = bybit.FrameDecoder("bybit", "spot", {"ETHUSDT": "ETH-USDT"})
    out = Decoded()
    decoder.decode([SPOT_BOOK_SNAPSHOT, SPOT_BOOK_DELTA], 9, out)
    snap, delta = out.books
    assert delta.bids[0][0] is snap.bids[0][0] == Decimal("2191.5")
    assert [str(p) for p, _ in delta.bids] == ["2191.5", "2191.2"]  # exact, as sent


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-inf", "sNaN", "12x"])
def test_a_book_price_that_is_no_finite_decimal_rejects_the_frame(bad: str) -> None:
    decoder = bybit.FrameDecoder("bybit", "spot", {"ETHUSDT": "ETH-USDT"})
    out = Decoded()
    frame = SPOT_BOOK_DELTA.replace(b'"2191.2"', json.dumps(bad).encode())
    decoder.decode([frame, SPOT_BOOK_DELTA], 9, out)
    assert len(out.books) == 1 and decoder.counters.malformed == 1
    assert "decimal" in (decoder.counters.last_error or "")


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-inf", "sNaN", "-0.5", "-0"])
@pytest.mark.parametrize("where", ["price", "amount"])
def test_a_book_level_that_is_no_finite_non_negative_decimal_rejects_the_frame(bad: str, where: str) -> None:
    # msgspec decodes "NaN", "-1" or "Infinity" into a Decimal: the decoder refuses them itself.
    decoder = bybit.FrameDecoder("bybit", "spot", {"ETHUSDT": "ETH-USDT"})
    data = json.loads(SPOT_BOOK_DELTA)
    data["data"]["b"][0][0 if where == "price" else 1] = bad
    frame = json.dumps(data, separators=(",", ":")).encode()
    assert frame.startswith(b'{"topic":"orderbook.')  # the one-pass path
    out = Decoded()
    decoder.decode([frame, SPOT_BOOK_DELTA], 9, out)
    assert len(out.books) == 1 and decoder.counters.malformed == 1
    assert "non-negative decimal" in (decoder.counters.last_error or "")


def test_a_negative_trade_price_does_not_reach_the_book_through_the_shared_table() -> None:
    # Book prices have their own checked table: a trade string kept elsewhere is never taken unchecked.
    decoder = bybit.FrameDecoder("bybit", "spot", {"ETHUSDT": "ETH-USDT"})
    decoder._decimals["-2191.2"] = Decimal("-2191.2")
    out = Decoded()
    decoder.decode([SPOT_BOOK_DELTA.replace(b'"2191.2"', b'"-2191.2"')], 9, out)
    assert out.books == [] and decoder.counters.malformed == 1


def test_book_frames_decode_alike_whatever_the_key_order() -> None:
    # The usual order takes the one-pass path; any other order the envelope path: same update.
    reordered = json.dumps({k: json.loads(SPOT_BOOK_DELTA)[k] for k in ("data", "type", "ts", "topic")})
    decoder = bybit.FrameDecoder("bybit", "spot", {"ETHUSDT": "ETH-USDT"})
    out = Decoded()
    decoder.decode([SPOT_BOOK_DELTA, reordered.encode()], 9, out)
    usual, other = out.books
    assert usual == other and usual.last_id == 219167607 and decoder.counters.book_updates == 2


def test_one_trade_frames_decode_like_the_same_trades_in_one_frame() -> None:
    """One-trade frames take an inline path: same trades, duplicates, counters and newest time as the
    same trades sent together."""
    ids = [1, 2, 3, 2, 4, 1, 5]
    single = bybit.FrameDecoder("bybit", "linear", {"BTCUSDT": "BTC-USDT-PERP"})
    joined = bybit.FrameDecoder("bybit", "linear", {"BTCUSDT": "BTC-USDT-PERP"})
    one, together = Decoded(), Decoded()
    t0 = 1_700_000_000_000

    def frame(*ids: int) -> bytes:
        data = ",".join(
            f'{{"T":{t0 + i},"s":"BTCUSDT","S":"Buy","v":"1","p":"100","i":"id-{i}"}}' for i in ids
        )
        return f'{{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[{data}]}}'.encode()

    single.decode([frame(i) for i in ids], 7, one)
    joined.decode([frame(*ids[:3]), frame(*ids[3:])], 7, together)
    assert [t.id for t in one.trades] == ["id-1", "id-2", "id-3", "id-4", "id-5"]
    assert one.trades == together.trades
    for decoder in (single, joined):
        assert (decoder.counters.trades, decoder.counters.duplicates) == (5, 2)
        assert decoder.last_ts == {"BTCUSDT": 1_700_000_000_005_000}
    recent = single._seen["BTCUSDT"]
    assert recent.current == {"id-1", "id-2", "id-3", "id-4", "id-5"} and recent.since == t0 * 1000 + 1000
