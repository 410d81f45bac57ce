"""Kraken v2: symbols, session, frames → records, the top-10 CRC32 book rule, REST parsers (PROTOCOLS §10)."""

from __future__ import annotations

import zlib
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketflow.exchanges.base import Ack, DataFrame, Decoded, Pong, Topic, TradeGap, UnknownControl
from marketflow.exchanges.kraken import VENUE, KrakenBook, KrakenBookUpdate, checksum, render
from marketflow.exchanges.kraken.book import MAX_FAILURES, RETRY_BASE_US, render_qty
from marketflow.exchanges.kraken.frames import FrameDecoder, Session, timestamp_us
from marketflow.exchanges.kraken.rest import parse_asset_pairs, parse_trades, trades_request
from marketflow.exchanges.orderbook import BookState
from marketflow.model import Level, SymbolError

D = Decimal

# Kraken's worked example (docs.kraken.com/exchange/guides/websockets/book-checksum-v2): BTC/USD, price
# precision 1, qty precision 8, checksum 3310070434.
DOC_BIDS = [
    ("45283.5", "0.10000000"), ("45283.4", "1.54582015"), ("45282.1", "0.10000000"),
    ("45281.0", "0.10000000"), ("45280.3", "1.54592586"), ("45279.0", "0.07990000"),
    ("45277.6", "0.03310103"), ("45277.5", "0.30000000"), ("45277.3", "1.54602737"),
    ("45276.6", "0.15445238"),
]  # fmt: skip
DOC_ASKS = [
    ("45285.2", "0.00100000"), ("45286.4", "1.54571953"), ("45286.6", "1.54571109"),
    ("45289.6", "1.54560911"), ("45290.2", "0.15890660"), ("45291.8", "1.54553491"),
    ("45294.7", "0.04454749"), ("45296.1", "0.35380000"), ("45297.5", "0.09945542"),
    ("45299.5", "0.18772827"),
]  # fmt: skip
DOC_CHECKSUM = 3310070434
# A recorded depth-25 BTC/USDT snapshot (2025, published in poldeperez/bot_arbitratge's checksum test): the
# checksum covers the top 10 of the 25 levels.
REC_BIDS = [
    ("105906.7", "0.09440620"), ("105901.7", "0.02297789"), ("105901.6", "0.09441075"),
    ("105901.4", "0.02400000"), ("105897.8", "0.01980353"), ("105897.6", "0.01877140"),
    ("105894.1", "0.00590000"), ("105894.0", "0.06080500"), ("105892.9", "0.05700000"),
    ("105889.1", "0.00630000"), ("105888.7", "0.05665135"), ("105888.1", "0.13300000"),
    ("105887.4", "0.04700000"), ("105887.3", "0.04300000"), ("105886.7", "0.14160549"),
    ("105885.9", "0.01844747"), ("105885.6", "0.54379100"), ("105879.5", "0.28806464"),
    ("105876.7", "0.14164938"), ("105875.9", "0.04300000"), ("105875.2", "0.63442300"),
    ("105871.6", "0.10427740"), ("105868.3", "0.02821348"), ("105865.3", "0.04300000"),
    ("105864.7", "0.81568600"),
]  # fmt: skip
REC_ASKS = [
    ("105906.8", "0.05665135"), ("105910.0", "0.70000000"), ("105910.6", "0.06080300"),
    ("105911.3", "0.28682600"), ("105915.8", "0.00061514"), ("105916.6", "0.09439743"),
    ("105918.9", "0.54378900"), ("105921.1", "0.09439338"), ("105925.8", "0.04300000"),
    ("105926.0", "0.09438908"), ("105927.7", "0.02821348"), ("105930.1", "0.00700000"),
    ("105933.5", "0.00920000"), ("105934.5", "0.00297419"), ("105935.3", "0.05700000"),
    ("105937.1", "0.00090000"), ("105937.2", "0.19500000"), ("105937.6", "0.05727740"),
    ("105938.1", "0.04300000"), ("105941.7", "0.00943915"), ("105943.3", "0.63448600"),
    ("105944.5", "0.86664740"), ("105944.6", "0.14155866"), ("105944.9", "0.02831660"),
    ("105948.7", "0.04300000"),
]  # fmt: skip
REC_CHECKSUM = 4162058887
SYMBOLS = {"BTC/USD": "BTC-USD", "BTC/USDT": "BTC-USDT", "DOGE/USD": "DOGE-USD"}
TS = "2023-10-06T17:35:55.440295Z"
TS_US = 1696613755440295


def levels(pairs: list[tuple[str, str]]) -> list[Level]:
    return [(D(p), D(q)) for p, q in pairs]


def wire_levels(pairs: list[tuple[str, str]]) -> str:
    """Levels as Kraken sends them: JSON numbers at full precision (trailing zeros kept)."""
    return ",".join('{"price":%s,"qty":%s}' % pair for pair in pairs)  # noqa: UP031


def book_frame(
    symbol: str,
    bids: list[tuple[str, str]],
    asks: list[tuple[str, str]],
    crc: int,
    kind: str = "update",
) -> bytes:
    head = f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{symbol}",'
    levels = f'"bids":[{wire_levels(bids)}],"asks":[{wire_levels(asks)}],'
    return (head + levels + f'"checksum":{crc},"timestamp":"{TS}"}}]}}').encode()


def instrument_frame(*pairs: tuple[str, int, int]) -> bytes:
    body = ",".join(
        f'{{"symbol":"{symbol}","base":"X","quote":"Y","status":"online","price_precision":{pp},'
        f'"qty_precision":{qp},"price_increment":0.1,"qty_increment":1e-8,"qty_min":0.0001}}'
        for symbol, pp, qp in pairs
    )
    return ('{"channel":"instrument","type":"snapshot","data":{"assets":[],"pairs":[%s]}}' % body).encode()  # noqa: UP031


def trade_frame(*trades: tuple[str, str, str, str, int], kind: str = "update") -> bytes:
    body = ",".join(
        '{"symbol":"%s","side":"%s","price":%s,"qty":%s,"ord_type":"market","trade_id":%d,"timestamp":"%s"}'  # noqa: UP031
        % (*t, TS)
        for t in trades
    )
    return ('{"channel":"trade","type":"%s","data":[%s]}' % (kind, body)).encode()  # noqa: UP031


def decode(decoder: FrameDecoder, *frames: bytes, recv_ts: int = 5) -> Decoded:
    out = Decoded()
    decoder.decode(list(frames), recv_ts, out)
    return out


def text_crc(bids: list[Level], asks: list[Level], pp: int, qp: int) -> int:
    """An independent rendering: format() at the precision, then Kraken's string steps."""

    def fmt(value: Decimal, precision: int) -> str:
        return format(value, f".{precision}f").replace(".", "").lstrip("0")

    asks_text = "".join(fmt(p, pp) + fmt(q, qp) for p, q in sorted(asks)[:10])
    bids_text = "".join(fmt(p, pp) + fmt(q, qp) for p, q in sorted(bids, reverse=True)[:10])
    return zlib.crc32((asks_text + bids_text).encode())


# -- symbols ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalized", "native"),
    [
        ("BTC/USD", "BTC-USD", "BTC/USD"),
        ("xbt/usd", "BTC-USD", "BTC/USD"),
        ("XBTUSD", "BTC-USD", "BTC/USD"),
        ("XXBTZUSD", "BTC-USD", "BTC/USD"),
        ("XDG/EUR", "DOGE-EUR", "DOGE/EUR"),
        ("ETH/XBT", "ETH-BTC", "ETH/BTC"),
        ("XETHXXBT", "ETH-BTC", "ETH/BTC"),
        ("XTZ/USD", "XTZ-USD", "XTZ/USD"),  # not a legacy X prefix
        ("XRPUSD", "XRP-USD", "XRP/USD"),
        ("ZRX-EUR", "ZRX-EUR", "ZRX/EUR"),
        ("BTCUSDT", "BTC-USDT", "BTC/USDT"),
    ],
)
def test_symbols_every_spelling_normalizes_xbt_and_xdg(text: str, normalized: str, native: str) -> None:
    assert VENUE.normalize_symbol("spot", text) == normalized
    assert VENUE.native_symbol("spot", normalized) == native


@pytest.mark.parametrize("bad", ["", "BTC/", "BTC/USD/EUR", "BTC!USD", "B TC/USD", "QQQQ"])
def test_symbols_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(SymbolError):
        VENUE.normalize_symbol("spot", bad)


# -- session ---------------------------------------------------------------------------------------------


def test_session_subscribes_instrument_first_then_one_topic_per_request() -> None:
    topics = [VENUE.topic("spot", "trades", "BTC/USD", 10), VENUE.topic("spot", "book", "BTC/USD", 25)]
    session = VENUE.session("spot", topics)
    requests = session.subscribe_requests()
    payloads = [msgspec.json.decode(r.payload) for r in requests]
    assert payloads == [
        {"method": "subscribe", "params": {"channel": "instrument", "snapshot": True}, "req_id": 1},
        {
            "method": "subscribe",
            "params": {"channel": "trade", "symbol": ["BTC/USD"], "snapshot": True},
            "req_id": 2,
        },
        {
            "method": "subscribe",
            "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 25, "snapshot": True},
            "req_id": 3,
        },
    ]
    assert [r.topics for r in requests] == [(), (topics[0],), (topics[1],)]
    resub = session.resubscribe_requests([topics[1]])
    assert [msgspec.json.decode(r.payload) for r in resub] == [
        {
            "method": "unsubscribe",
            "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 25},
            "req_id": 4,
        },
        {
            "method": "subscribe",
            "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 25, "snapshot": True},
            "req_id": 5,
        },
    ]
    assert session.heartbeat() == b'{"method":"ping"}'
    only_trades = VENUE.session("spot", topics[:1]).subscribe_requests()
    assert len(only_trades) == 1  # no books: no instrument subscription


def test_session_acks_per_symbol_pongs_and_data_frames() -> None:
    session = Session("spot", ["trade:BTC/USD"])
    ack = (
        b'{"method":"subscribe","result":{"channel":"trade","snapshot":true,"symbol":"BTC/USD"},'
        b'"success":true,"time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z",'
        b'"req_id":7}'
    )
    assert session.control(ack) == Ack("7", True, "")
    refused = (
        b'{"error":"Currency pair not supported BTC/XYZ","method":"subscribe","req_id":8,"success":false,'
        b'"symbol":"BTC/XYZ","time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z"}'
    )
    assert session.control(refused) == Ack("8", False, "Currency pair not supported BTC/XYZ")
    assert session.control(b'{"method":"pong","req_id":3,"time_in":"x","time_out":"y"}') == Pong()
    assert session.is_data(b'{"channel":"heartbeat"}')
    assert session.is_data(book_frame("BTC/USD", [], [], 0))
    assert session.control(b'{"type":"update","channel":"book","data":[]}') == DataFrame()
    assert isinstance(session.control(b'{"method":"what"}'), UnknownControl)


# -- trades ----------------------------------------------------------------------------------------------


def test_trades_keep_taker_side_exact_decimals_and_follow_ids() -> None:
    decoder = FrameDecoder("kraken", "spot", SYMBOLS)
    out = decode(
        decoder,
        trade_frame(
            ("BTC/USD", "buy", "45285.20", "0.00100000", 100),
            ("BTC/USD", "sell", "45285.1", "2", 101),
            kind="snapshot",
        ),
        trade_frame(("BTC/USD", "sell", "45285.0", "0.5", 101), ("BTC/USD", "buy", "45286.0", "0.25", 105)),
    )
    assert [(t.id, t.side, str(t.price), str(t.amount), t.ts, t.symbol) for t in out.trades] == [
        ("100", "buy", "45285.20", "0.00100000", TS_US, "BTC-USD"),
        ("101", "sell", "45285.1", "2", TS_US, "BTC-USD"),
        ("105", "buy", "45286.0", "0.25", TS_US, "BTC-USD"),
    ]
    assert decoder.counters.duplicates == 1
    assert out.trade_gaps == [TradeGap("kraken", "spot", "BTC-USD", "BTC/USD", 102, 105, TS_US, TS_US)]
    # A reconnect's snapshot repeats the last 50: only the new ones pass, out-of-order ids are sorted.
    again = decode(
        decoder,
        trade_frame(("BTC/USD", "buy", "1", "1", 106), ("BTC/USD", "buy", "1", "1", 105), kind="snapshot"),
    )
    assert [t.id for t in again.trades] == ["106"] and again.trade_gaps == []


def test_malformed_and_unknown_frames_are_counted_never_raised() -> None:
    decoder = FrameDecoder("kraken", "spot", SYMBOLS)
    bad_price = trade_frame(("BTC/USD", "buy", '"abc"', "1", 1))
    bad_side = trade_frame(("BTC/USD", "maker", "1", "1", 1))
    bad_time = trade_frame(("BTC/USD", "buy", "1", "1", 1)).replace(TS.encode(), b"yesterday")
    out = decode(
        decoder,
        bad_price,
        bad_side,
        bad_time,
        b'{"channel":"ohlc","type":"update","data":[]}',
        b'{"channel":"heartbeat"}',
        b'{"channel":"status","type":"update","data":[{"system":"online"}]}',
        trade_frame(("ADA/USD", "buy", "1", "1", 1)),
        b'{"channel":"book","data":[{"symbol":"BTC/USD"',
    )
    assert out.trades == [] and out.books == []
    c = decoder.counters
    assert (c.malformed, c.ignored, c.unknown_topics) == (4, 3, 1)


@pytest.mark.parametrize("bad", ['"NaN"', '"Infinity"', "-1.5", '"-0"'])
@pytest.mark.parametrize("where", ["price", "qty"])
def test_a_book_level_that_is_no_finite_non_negative_decimal_rejects_the_frame(bad: str, where: str) -> None:
    # Levels decode straight into Decimal, which takes "NaN" or a negative number: checked before use.
    decoder = FrameDecoder("kraken", "spot", SYMBOLS)
    level = (bad, "1.5") if where == "price" else ("100.5", bad)
    good = book_frame("BTC/USD", [("100.5", "1")], [], 0)
    out = decode(decoder, book_frame("BTC/USD", [level], [], 0), good)
    assert len(out.books) == 1 and decoder.counters.malformed == 1
    assert "not a finite non-negative decimal" in (decoder.counters.last_error or "")


def test_book_prices_are_one_shared_exact_decimal_per_number_text() -> None:
    # A fresh Decimal computes its hash on first use; one object per price text makes the book's lookups
    # hit a cached hash (issue 20). Prices keep their digits; integers and strings are prices too.
    decoder = FrameDecoder("kraken", "spot", SYMBOLS)
    out = decode(
        decoder,
        book_frame("BTC/USD", [("64999.60", "1.5"), ("65000", "2")], [("65001.3", "1")], 0),
        book_frame("BTC/USD", [("64999.60", "0.5")], [("65001.3", "0"), ('"65002.5"', "3")], 0),
    )
    first, second = out.books
    assert first.bids[0][0] is second.bids[0][0] and first.asks[0][0] is second.asks[0][0]
    assert [(str(p), str(q)) for p, q in first.bids + second.asks] == [
        ("64999.60", "1.5"),
        ("65000", "2"),
        ("65001.3", "0"),
        ("65002.5", "3"),
    ]
    assert decoder.counters.malformed == 0


def test_timestamps_are_read_to_the_microsecond() -> None:
    assert timestamp_us(TS) == TS_US
    assert timestamp_us("2023-10-06T17:35:55Z") == TS_US - 440295
    assert timestamp_us("2023-10-06T17:35:55.4Z") == TS_US - 40295
    with pytest.raises(msgspec.DecodeError):
        timestamp_us("2023-10-06 17:35:55")


# -- checksum --------------------------------------------------------------------------------------------


def test_checksum_matches_krakens_worked_example() -> None:
    assert render(D("45285.2"), 1) == "452852"
    assert render(D("0.00100000"), 8) == "100000"
    assert checksum(levels(DOC_BIDS), levels(DOC_ASKS), 1, 8) == DOC_CHECKSUM
    assert text_crc(levels(DOC_BIDS), levels(DOC_ASKS), 1, 8) == DOC_CHECKSUM


def test_checksum_renders_at_the_pairs_precision_not_the_wire_digits() -> None:
    # `56218.30000` at precision 1 is `562183`: a book sent with extra digits checks the same.
    wide_bids = [(p + "0000", q) for p, q in DOC_BIDS]
    assert checksum(levels(wide_bids), levels(DOC_ASKS), 1, 8) == DOC_CHECKSUM
    hashed_as_sent = zlib.crc32(
        "".join((p + q).replace(".", "").lstrip("0") for p, q in [*DOC_ASKS, *wide_bids]).encode()
    )
    assert hashed_as_sent != DOC_CHECKSUM


def updates(
    snapshot: bool, bids: list[tuple[str, str]], asks: list[tuple[str, str]], crc: int, **kw: int
) -> KrakenBookUpdate:
    return KrakenBookUpdate(
        "kraken", "BTC-USDT", snapshot, 1, 1, 0, levels(bids), levels(asks), 0, kw.get("recv_ts", 0), crc,
        kw.get("pp", 1), kw.get("qp", 8),
    )  # fmt: skip


def test_a_recorded_depth_25_snapshot_checks_its_top_10_through_the_decoder() -> None:
    decoder = FrameDecoder("kraken", "spot", SYMBOLS)
    out = decode(
        decoder,
        instrument_frame(("BTC/USDT", 1, 8), ("ETH/USDT", 2, 8)),
        book_frame("BTC/USDT", REC_BIDS, REC_ASKS, REC_CHECKSUM, "snapshot"),
    )
    (update,) = out.books
    assert isinstance(update, KrakenBookUpdate) and update.snapshot
    assert (update.price_precision, update.qty_precision, update.checksum) == (1, 8, REC_CHECKSUM)
    assert str(update.asks[1][0]) == "105910.0" and str(update.bids[0][1]) == "0.09440620"
    book = KrakenBook()
    assert book.on_update(update) is None
    assert book.state is BookState.SYNCED and book.depth == 25
    assert book.book.depth() == (25, 25)


def test_updates_apply_truncate_to_depth_and_check_every_message() -> None:
    book = KrakenBook()
    assert book.on_update(updates(True, DOC_BIDS, DOC_ASKS, DOC_CHECKSUM)) is None
    assert book.state is BookState.SYNCED and book.depth == 10
    # A new best bid pushes the 10th bid out of the depth: no delete comes for it.
    new_bids = [("45284.0", "0.50000000"), *DOC_BIDS[:9]]
    removed_ask = DOC_ASKS[0]
    new_asks = [*DOC_ASKS[1:], ("45300.0", "1.00000000")]
    crc = text_crc(levels(new_bids), levels(new_asks), 1, 8)
    update = updates(
        False, [("45284.0", "0.50000000")], [(removed_ask[0], "0"), ("45300.0", "1.00000000")], crc
    )
    assert book.on_update(update) is None
    assert book.state is BookState.SYNCED
    assert book.book.top(20) == (levels(new_bids), levels(new_asks))
    assert book.checksums_verified == 2


def test_the_subscribed_depth_holds_when_the_snapshot_is_thinner() -> None:
    # A 10-level snapshot of a depth-25 subscription: the book has only 10 levels now. Inferred from the
    # snapshot, the depth would be 10 and a level arriving below them would be cut; given, it is kept.
    deeper = [("45270.0", "1.00000000")]  # below every bid: outside the checksum's top 10
    given = VENUE.synchronizer("spot", 25)
    inferred = VENUE.synchronizer("spot")
    assert isinstance(given, KrakenBook) and isinstance(inferred, KrakenBook)
    for book in (given, inferred):
        assert book.on_update(updates(True, DOC_BIDS, DOC_ASKS, DOC_CHECKSUM)) is None
        assert book.on_update(updates(False, deeper, [], DOC_CHECKSUM)) is None
        assert book.state is BookState.SYNCED
    assert (given.depth, given.book.depth()) == (25, (11, 10))
    assert (inferred.depth, inferred.book.depth()) == (10, (10, 10))
    with pytest.raises(ValueError, match="kraken book depth must be one of"):
        VENUE.synchronizer("spot", 30)


def test_a_mismatch_discards_the_book_and_the_next_snapshot_resyncs() -> None:
    book = KrakenBook()
    book.on_update(updates(True, DOC_BIDS, DOC_ASKS, DOC_CHECKSUM))
    gap = book.on_update(updates(False, [("45283.5", "0.2")], [], DOC_CHECKSUM))
    assert (
        gap is not None
        and gap.reason.startswith("checksum ")
        and f"not the {DOC_CHECKSUM} sent" in gap.reason
    )
    assert book.state is BookState.RESYNCING and book.book.depth() == (0, 0)
    assert book.on_update(updates(False, [], [], DOC_CHECKSUM)) is None  # ignored until a snapshot
    assert book.on_update(updates(True, DOC_BIDS, DOC_ASKS, DOC_CHECKSUM)) is None
    stats = book.statistics()
    assert (book.state, stats.resyncs, stats.gaps, stats.updates_ignored) == (BookState.SYNCED, 1, 1, 1)


def test_a_book_waits_unserved_until_the_precisions_are_known() -> None:
    book = KrakenBook()
    assert book.on_update(updates(True, DOC_BIDS, DOC_ASKS, DOC_CHECKSUM, pp=-1, qp=-1)) is None
    assert book.state is BookState.WAITING and book.last_id is None
    assert book.book.depth() == (10, 10)  # kept, not served
    assert book.on_update(updates(False, [], [], DOC_CHECKSUM)) is None
    assert book.state is BookState.SYNCED


def test_repeated_failures_back_off_instead_of_looping() -> None:
    book = KrakenBook()
    gaps = [
        book.on_update(updates(True, DOC_BIDS, DOC_ASKS, DOC_CHECKSUM + 1, recv_ts=n))
        for n in range(MAX_FAILURES)
    ]
    assert all(g is not None for g in gaps)
    # The next failure waits RETRY_BASE_US (receive time) before asking again; the stream is ignored.
    assert book.on_update(updates(True, DOC_BIDS, DOC_ASKS, 1, recv_ts=10)) is None
    assert book.retry_at == 10 + RETRY_BASE_US and book.state is BookState.RESYNCING
    assert book.on_update(updates(False, [], [], 1, recv_ts=10 + RETRY_BASE_US - 1)) is None
    gap = book.on_update(updates(False, [], [], 1, recv_ts=10 + RETRY_BASE_US))
    assert gap is not None and "4 times in a row" in gap.reason
    assert book.on_update(updates(True, DOC_BIDS, DOC_ASKS, 1, recv_ts=2 * RETRY_BASE_US)) is None
    assert book.retry_at == 2 * RETRY_BASE_US + 2 * RETRY_BASE_US  # doubled
    # A good snapshot after the wait ends the streak.
    assert (
        book.on_update(updates(True, DOC_BIDS, DOC_ASKS, DOC_CHECKSUM, recv_ts=10 * RETRY_BASE_US))
        is not None
    )
    assert book.on_update(updates(True, DOC_BIDS, DOC_ASKS, DOC_CHECKSUM, recv_ts=10 * RETRY_BASE_US)) is None
    assert book.state is BookState.SYNCED and book.consecutive_failures == 0


@given(st.decimals(min_value=0, max_value=10**9, allow_nan=False, places=None), st.integers(0, 10))
def test_the_quick_quantity_text_is_the_checksum_text(value: Decimal, precision: int) -> None:
    assert render_qty(value, precision) == render(value, precision)
    for text in ("1E-8", "0.00000001", "2.5", "2.50000000", "2.500000001", "12E+3", "1.2E+5", "0.00000000"):
        assert render_qty(D(text), 8) == render(D(text), 8), text


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_message_checks_against_a_brute_force_book(data: st.DataObject) -> None:
    # Random deltas near and far from the touch, one side or both, now and then a message before the
    # precisions are known: each message's checksum is the one of a plain dict book truncated to depth.
    depth = 25
    model: dict[str, dict[Decimal, Decimal]] = {"bids": {}, "asks": {}}
    book = KrakenBook(depth)

    def apply(bids: list[Level], asks: list[Level]) -> int:
        for side, changes in (("bids", bids), ("asks", asks)):
            for price, qty in changes:
                if qty:
                    model[side][price] = qty
                else:
                    model[side].pop(price, None)
        kept_bids = sorted(model["bids"].items(), reverse=True)[:depth]
        kept_asks = sorted(model["asks"].items())[:depth]
        model["bids"], model["asks"] = dict(kept_bids), dict(kept_asks)
        return checksum(kept_bids, kept_asks, 1, 8)

    def side_levels(low: int, high: int, size: int) -> list[Level]:
        ticks = data.draw(st.lists(st.integers(low, high), max_size=size, unique=True))
        sizes = st.sampled_from(["0", "0.00000001", "1.5", "2.12345678", "30"])
        return [(D(tick) / 10, D(data.draw(sizes))) for tick in ticks]

    bids = side_levels(9000, 9999, 40)
    asks = side_levels(10000, 10999, 40)
    crc = apply(bids, asks)
    assert book.on_update(KrakenBookUpdate("kraken", "X", True, 1, 1, 0, bids, asks, 0, 0, crc, 1, 8)) is None
    for n in range(2, 40):
        bids = side_levels(9000, 9999, 4) if data.draw(st.booleans()) else []
        asks = side_levels(10000, 10999, 4) if data.draw(st.booleans()) else []
        crc = apply(bids, asks)
        known = data.draw(st.integers(0, 9)) > 0
        update = KrakenBookUpdate(
            "kraken", "X", False, n, n, n - 1, bids, asks, 0, 0, crc, 1 if known else -1, 8 if known else -1
        )
        assert book.on_update(update) is None, n
        if known:
            assert book.state is BookState.SYNCED
    assert book.statistics().gaps == 0


# -- REST ------------------------------------------------------------------------------------------------

TRADES_BODY = (
    b'{"error":[],"result":{"XXBTZUSD":[["45285.20000","0.00100000",1696613755.440295,"b","m","",102],'
    b'["45285.10000","0.50000000",1696613755.5,"s","l","",103]],"last":"1696613755500000000"}}'
)
PAIRS_BODY = (
    b'{"error":[],"result":{"XXBTZUSD":{"altname":"XBTUSD","wsname":"XBT/USD","pair_decimals":1,'
    b'"lot_decimals":8,"tick_size":"0.1","status":"online"},"XDGUSD":{"altname":"XDGUSD","wsname":"XDG/USD",'
    b'"pair_decimals":7,"lot_decimals":8,"status":"online"}}}'
)


def test_rest_trades_rows_carry_ids_sides_and_exact_times() -> None:
    request = trades_request("BTC/USD", 1696613755440294999)
    assert (request.path, request.params) == (
        "/0/public/Trades",
        {"pair": "XBTUSD", "since": 1696613755440294999, "count": 1000},
    )
    page = parse_trades(TRADES_BODY, "kraken", "BTC-USD", 9)
    assert page.last == 1696613755500000000
    assert [(t.id, t.side, str(t.price), str(t.amount), t.ts) for t in page.trades] == [
        ("102", "buy", "45285.20000", "0.00100000", TS_US),
        ("103", "sell", "45285.10000", "0.50000000", TS_US - 440295 + 500000),
    ]
    with pytest.raises(ValueError, match="EGeneral:Invalid arguments"):
        parse_trades(b'{"error":["EGeneral:Invalid arguments"]}', "kraken", "BTC-USD", 9)
    with pytest.raises(ValueError, match="not understood"):
        parse_trades(b'{"error":[],"result":{"X":[["1"]],"last":"1"}}', "kraken", "BTC-USD", 9)


def test_rest_asset_pairs_give_precisions_by_v2_name() -> None:
    pairs = parse_asset_pairs(PAIRS_BODY)
    assert sorted(pairs) == ["BTC/USD", "DOGE/USD"]
    assert (pairs["BTC/USD"].price_precision, pairs["BTC/USD"].qty_precision) == (1, 8)
    assert pairs["DOGE/USD"].tick_size == D("0.0000001") and pairs["BTC/USD"].lot_size == D("0.00000001")


async def test_instruments_hook_reads_asset_pairs() -> None:
    asked = []

    async def fetch(request: object) -> bytes:
        asked.append(request)
        return PAIRS_BODY

    found = await VENUE.instruments("spot", ["BTC/USD", "ETH/USD"], fetch)  # type: ignore[arg-type]
    assert [(i.native, i.tick_size, i.amount_unit) for i in found] == [("BTC/USD", D("0.1"), "base")]
    assert len(asked) == 1


# -- ticker ----------------------------------------------------------------------------------------------


def test_ticker_messages_are_whole_states_with_exact_decimals() -> None:
    topic = VENUE.topic("spot", "ticker", "BTC/USD", 10)
    assert topic == "ticker:BTC/USD" and VENUE.parse_topic("spot", topic) == Topic("ticker", "BTC/USD")
    (plan,) = VENUE.connections("spot", ["BTC/USD"], ("ticker",), 10)
    assert plan.topics == (topic,) and plan.channels == frozenset({"ticker"})
    (request,) = VENUE.session("spot", plan.topics).subscribe_requests()
    assert msgspec.json.decode(request.payload)["params"] == {
        "channel": "ticker",
        "symbol": ["BTC/USD"],
        "snapshot": True,
    }
    frame = (
        b'{"channel":"ticker","type":"update","data":[{"symbol":"BTC/USD","bid":45283.50,"bid_qty":0.10000000,'
        b'"ask":45285.20,"ask_qty":0.00100000,"last":45285.2,"volume":1234.56780000,"vwap":45000.1,'
        b'"low":44000.0,"high":46000.0,"change":100.0,"change_pct":0.22}]}'
    )
    decoder = FrameDecoder("kraken", "spot", SYMBOLS)
    out = decode(decoder, frame, recv_ts=77)
    (ticker,) = out.tickers
    assert (ticker.symbol, ticker.ts, ticker.recv_ts, ticker.snapshot) == ("BTC-USD", 77, 77, True)
    fields = (ticker.bid, ticker.bid_size, ticker.ask, ticker.ask_size, ticker.last, ticker.volume_24h)
    assert [format(v, "f") for v in fields if v is not None] == [
        "45283.50",
        "0.10000000",
        "45285.20",
        "0.00100000",
        "45285.2",
        "1234.56780000",
    ]
    timed = frame.replace(b',"change_pct":0.22}', b',"change_pct":0.22,"timestamp":"%s"}' % TS.encode())
    assert decode(decoder, timed).tickers[0].ts == TS_US
    assert decoder.counters.tickers == 2
    with pytest.raises(ValueError, match="no 'derivatives' channel"):
        VENUE.topic("spot", "derivatives", "BTC/USD", 10)
