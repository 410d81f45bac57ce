"""Coinbase Advanced Trade: session, sequence rule, decoder, book rule and REST on frames shaped like
PROTOCOLS.md §9 (envelope `{channel, client_id, timestamp, sequence_num, events}`)."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
import trio
import trio.testing

from marketflow.config import ConfigError, parse_config
from marketflow.exchanges import coinbase
from marketflow.exchanges.base import (
    Ack,
    DataFrame,
    Decoded,
    Pong,
    RestRequest,
    TradeGap,
    UnknownControl,
    sequence_marker,
)
from marketflow.exchanges.coinbase.book import CoinbaseBook
from marketflow.exchanges.coinbase.frames import FrameDecoder, Session, Values
from marketflow.exchanges.coinbase.rest import TICKER_LIMIT, fill_gap, parse_ticker
from marketflow.exchanges.orderbook import BookState
from marketflow.exchanges.ws import FeedError, open_ws
from marketflow.model import SymbolError
from tests.exchanges.test_ws_frames import URL, Peer, frame

VENUE = coinbase.VENUE
TS = "2026-08-14T20:42:27.265123456Z"
TS_US = 1786740147_265123


def envelope(channel: str, seq: int, events: list[dict[str, object]], ts: str = TS) -> bytes:
    return msgspec.json.encode(
        {"channel": channel, "client_id": "", "timestamp": ts, "sequence_num": seq, "events": events}
    )


def trade(
    tid: int, side: str, price: str = "65000.01", size: str = "0.5", product: str = "BTC-USD"
) -> dict[str, str]:
    return {
        "trade_id": str(tid),
        "product_id": product,
        "price": price,
        "size": size,
        "side": side,
        "time": TS,
    }


def trades_frame(seq: int, trades: list[dict[str, str]], kind: str = "update") -> bytes:
    return envelope("market_trades", seq, [{"type": kind, "trades": trades}])


def level(side: str, price: str, qty: str) -> dict[str, str]:
    return {"side": side, "event_time": "1970-01-01T00:00:00Z", "price_level": price, "new_quantity": qty}


def l2_frame(seq: int, kind: str, updates: list[dict[str, str]], product: str = "BTC-USD") -> bytes:
    return envelope("l2_data", seq, [{"type": kind, "product_id": product, "updates": updates}])


# -- symbols, topics, config ---------------------------------------------------------------------------


def test_products_are_their_own_normalized_symbols() -> None:
    assert VENUE.normalize_symbol("spot", "btc-usd") == "BTC-USD"
    assert VENUE.normalize_symbol("spot", "ETHUSDC") == "ETH-USDC"
    assert VENUE.native_symbol("spot", "BTC-USD") == "BTC-USD"
    for bad in ("BTC-USD-PERP", "BTC-", "B?C-USD"):
        with pytest.raises(SymbolError):
            VENUE.normalize_symbol("spot", bad)


def test_book_depth_is_refused_and_the_message_size_is_bounded() -> None:
    feed = '[[feeds]]\nexchange = "coinbase"\nmarket = "spot"\nsymbols = ["BTC-USD"]\n'
    (parsed,) = parse_config(feed, env={}).feeds
    assert (parsed.book_depth, parsed.max_message_mb) == (0, 16)
    with pytest.raises(ConfigError, match="coinbase spot streams the whole book; remove book_depth"):
        parse_config(feed + "book_depth = 50\n", env={})
    (parsed,) = parse_config(feed + "max_message_mb = 64\n", env={}).feeds
    assert parsed.max_message_mb == 64
    with pytest.raises(ConfigError, match=r"max_message_mb: must be an integer number of MiB from 1 to 256"):
        parse_config(feed + "max_message_mb = 0\n", env={})


# -- session ---------------------------------------------------------------------------------------------


def test_one_channel_per_subscribe_heartbeats_first() -> None:
    plan = VENUE.connections("spot", ["BTC-USD", "ETH-USD"], ("trades", "book"), 0, None)[0]
    session = Session("spot", plan.topics)
    requests = session.subscribe_requests()
    bodies = [msgspec.json.decode(r.payload) for r in requests]
    assert bodies == [
        {"type": "subscribe", "channel": "heartbeats"},
        {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "level2"},
        {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "market_trades"},
    ]
    assert requests[0].topics == ()
    assert session.send_interval_s >= 1 / 8  # 8 unauthenticated messages/s per IP
    again = [msgspec.json.decode(r.payload) for r in session.resubscribe_requests(["level2:ETH-USD"])]
    assert again == [
        {"type": "unsubscribe", "product_ids": ["ETH-USD"], "channel": "level2"},
        {"type": "subscribe", "product_ids": ["ETH-USD"], "channel": "level2"},
    ]
    many = Session("spot", [f"market_trades:C{i}-USD" for i in range(60)]).subscribe_requests()
    assert [len(r.topics) for r in many] == [0, 25, 25, 10]


def test_control_frames() -> None:
    session = Session("spot", [])
    ack = envelope("subscriptions", 0, [{"subscriptions": {"level2": ["BTC-USD"], "heartbeats": []}}])
    assert session.control(ack) == Ack(None, True, "")
    error = b'{"type":"error","message":"Failed to subscribe","reason":"BTC-XYZ is not a valid product"}'
    refused = ("level2:BTC-XYZ", "market_trades:BTC-XYZ", "ticker:BTC-XYZ")  # that product alone
    reason = "Failed to subscribe: BTC-XYZ is not a valid product"
    assert session.control(error) == Ack(None, False, reason, refused, others_refused=True)
    beat = envelope("heartbeats", 3, [{"current_time": TS, "heartbeat_counter": 7}])
    assert session.control(beat) == Pong()
    assert not session.is_data(beat) and not session.is_data(ack)
    reordered = b'{"sequence_num":1,"channel":"market_trades","events":[]}'
    assert not session.is_data(reordered) and session.control(reordered) == DataFrame()
    assert session.is_data(trades_frame(1, [])) and session.is_data(l2_frame(2, "update", []))
    assert isinstance(session.control(b'{"channel":"nope"}'), UnknownControl)


def test_sequence_gap_makes_a_marker_for_the_connections_books() -> None:
    session = Session("spot", ["level2:BTC-USD", "market_trades:BTC-USD", "level2:ETH-USD"])
    frames = [envelope("subscriptions", 0, []), envelope("heartbeats", 1, []), trades_frame(2, [])]
    assert [sequence_marker(session, f) for f in frames] == [None, None, None]
    marker = sequence_marker(session, l2_frame(6, "update", []))
    assert marker is not None
    assert msgspec.json.decode(marker) == {
        "channel": "marketflow_sequence_gap",
        "from": 2,
        "to": 6,
        "product_ids": ["BTC-USD", "ETH-USD"],
    }
    assert sequence_marker(session, envelope("heartbeats", 7, [])) is None
    assert sequence_marker(session, envelope("subscriptions", 0, [])) is None  # a new connection (replay)
    assert sequence_marker(session, b'{"type":"error","message":"x"}') is None
    assert session.sequence_gaps == 1


# -- decoder ---------------------------------------------------------------------------------------------


def decode(decoder: FrameDecoder, *frames: bytes) -> Decoded:
    out = Decoded()
    decoder.decode(list(frames), 99, out)
    return out


def test_trades_store_the_taker_side_in_id_order_and_follow_ids() -> None:
    decoder = VENUE.decoder("spot", {"BTC-USD": "BTC-USD"})
    assert isinstance(decoder, FrameDecoder)
    snapshot = trades_frame(1, [trade(103, "SELL"), trade(101, "BUY"), trade(102, "BUY")], "snapshot")
    out = decode(decoder, snapshot)
    assert [(t.id, t.side) for t in out.trades] == [("101", "sell"), ("102", "sell"), ("103", "buy")]
    first = out.trades[0]
    assert (first.price, first.amount, first.ts, first.recv_ts) == (
        Decimal("65000.01"),
        Decimal("0.5"),
        TS_US,
        99,
    )
    # A reconnect repeats the recent-trades snapshot: nothing twice; a jump is a gap.
    out = decode(
        decoder, trades_frame(1, [trade(102, "BUY"), trade(103, "SELL"), trade(104, "SELL")], "snapshot")
    )
    assert [t.id for t in out.trades] == ["104"] and decoder.counters.duplicates == 2
    out = decode(decoder, trades_frame(2, [trade(109, "BUY"), trade(108, "SELL")]))
    assert [t.id for t in out.trades] == ["108", "109"]
    assert out.trade_gaps == [TradeGap("coinbase", "spot", "BTC-USD", "BTC-USD", 105, 108, TS_US, TS_US)]


def test_usdc_subscriptions_arrive_tagged_usd() -> None:
    decoder = VENUE.decoder("spot", {"BTC-USDC": "BTC-USDC", "USDT-USDC": "USDT-USDC"})
    out = decode(
        decoder, trades_frame(1, [trade(5, "BUY")]), l2_frame(2, "snapshot", [level("bid", "1", "2")])
    )
    assert [t.symbol for t in out.trades] == ["BTC-USDC"] and [b.symbol for b in out.books] == ["BTC-USDC"]
    out = decode(decoder, trades_frame(3, [trade(6, "BUY", product="USDT-USD")]))
    assert out.trades == [] and decoder.counters.unknown_topics == 1


def test_level2_offers_are_asks_and_quantities_absolute() -> None:
    decoder = VENUE.decoder("spot", {"BTC-USD": "BTC-USD"})
    book = CoinbaseBook()
    out = decode(
        decoder,
        l2_frame(
            1,
            "snapshot",
            [level("bid", "100.5", "2"), level("offer", "101", "1"), level("offer", "102", "3")],
        ),
        l2_frame(2, "update", [level("offer", "101", "0"), level("bid", "100.5", "0.25")]),
    )
    assert [(u.snapshot, u.first_id, u.last_id, u.prev_id, u.ts) for u in out.books] == [
        (True, 1, 1, 0, TS_US),
        (False, 2, 2, 0, TS_US),
    ]
    for update in out.books:
        assert book.on_update(update) is None
    assert book.book.levels() == ([(Decimal("100.5"), Decimal("0.25"))], [(Decimal("102"), Decimal("3"))])


def test_book_prices_are_shared_objects_and_quantities_stay_out_of_the_tables() -> None:
    # Quantities seldom repeat: keeping them in a shared table only made it start over often (issue 20).
    decoder = VENUE.decoder("spot", {"BTC-USD": "BTC-USD"})
    out = decode(
        decoder,
        l2_frame(1, "snapshot", [level("bid", "100.50", "2.125"), level("offer", "101", "1")]),
        l2_frame(2, "update", [level("bid", "100.50", "3.375"), level("offer", "101", "0")]),
    )
    first, second = out.books
    assert first.bids[0][0] is second.bids[0][0] and first.asks[0][0] is second.asks[0][0]
    assert [b.bids + b.asks for b in out.books] == [
        [(Decimal("100.50"), Decimal("2.125")), (Decimal("101"), Decimal("1"))],
        [(Decimal("100.50"), Decimal("3.375")), (Decimal("101"), Decimal("0"))],
    ]
    assert not {"2.125", "3.375", "1", "0"} & set(decoder.values.shared)


@pytest.mark.parametrize(
    ("price", "qty"),
    [("100", "NaN"), ("100", "-1"), ("100", "Infinity"), ("100", "x"), ("NaN", "1"), ("-5", "1")],
)
def test_a_book_level_that_is_no_finite_non_negative_decimal_rejects_the_frame(price: str, qty: str) -> None:
    decoder = VENUE.decoder("spot", {"BTC-USD": "BTC-USD"})
    out = decode(decoder, l2_frame(1, "update", [level("bid", "99", "1"), level("offer", price, qty)]))
    assert out.books == [] and decoder.counters.malformed == 1


def test_a_sequence_gap_fails_the_books_and_a_new_snapshot_heals_them() -> None:
    session = Session("spot", ["level2:BTC-USD"])
    decoder = VENUE.decoder("spot", {"BTC-USD": "BTC-USD"})
    book = CoinbaseBook()
    waiting = CoinbaseBook()
    wire = [
        l2_frame(0, "snapshot", [level("bid", "100", "1"), level("offer", "101", "1")]),
        l2_frame(1, "update", [level("bid", "100", "2")]),
        l2_frame(5, "update", [level("bid", "99", "7")]),  # 2..4 lost
    ]
    data = []
    for message in wire:
        marker = sequence_marker(session, message)
        if marker is not None:
            data.append(marker)
        data.append(message)
    out = decode(decoder, *data)
    gaps = [book.on_update(u) for u in out.books]
    assert [g.reason if g else None for g in gaps] == [
        None,
        None,
        "sequence_num jumped from 1 to 5 on the connection (3 messages lost)",
        None,
    ]
    assert book.state is BookState.RESYNCING and book.book.depth() == (0, 0)
    assert book.statistics().updates_ignored == 1  # the update after the loss is not applied
    assert waiting.on_update(out.books[2]) is not None  # a lost snapshot is asked for again too
    heal = decode(decoder, l2_frame(9, "snapshot", [level("bid", "98", "1"), level("offer", "99.5", "4")]))
    assert book.on_update(heal.books[0]) is None and book.state is BookState.SYNCED
    assert book.book.top(1) == ([(Decimal("98"), Decimal("1"))], [(Decimal("99.5"), Decimal("4"))])
    assert heal.books[0].prev_id == 1 == decoder.epoch


def test_malformed_and_foreign_frames_are_counted() -> None:
    decoder = VENUE.decoder("spot", {"BTC-USD": "BTC-USD"})
    out = decode(
        decoder,
        trades_frame(1, [trade(1, "BUY", price="abc")]),
        trades_frame(2, [trade(2, "HOLD")]),
        l2_frame(3, "update", [level("ask", "1", "1")]),
        envelope("candles", 4, []),
        b"\x00\x01",
    )
    assert out.trades == [] and out.books == []
    assert (decoder.counters.malformed, decoder.counters.ignored) == (4, 1)


def test_a_five_megabyte_snapshot_decodes_into_the_whole_book() -> None:
    levels = [level("bid", f"{50000 - i * 0.01:.2f}", "0.12345678") for i in range(30_000)]
    levels += [level("offer", f"{50000.01 + i * 0.01:.2f}", "1.5") for i in range(30_000)]
    wire = l2_frame(0, "snapshot", levels)
    assert len(wire) > 5 * 1024 * 1024
    out = decode(VENUE.decoder("spot", {"BTC-USD": "BTC-USD"}), wire)
    book = CoinbaseBook()
    assert book.on_update(out.books[0]) is None
    assert book.book.depth() == (30_000, 30_000)


async def test_the_transport_takes_a_five_megabyte_message_within_its_bound() -> None:
    payload = l2_frame(0, "snapshot", [level("bid", "1.00", "2")] * 70_000)
    assert 5 * 1024 * 1024 < len(payload) < 16 * 1024 * 1024
    for max_message, fits in ((16 * 1024 * 1024, True), (1024 * 1024, False)):
        client_stream, server_stream = trio.testing.memory_stream_pair()
        peer = Peer(server_stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.accept, b"")
            conn = await open_ws(URL, client_stream, max_message=max_message)
        got: list[bytes] = []
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.stream.send_all, frame(0x1, payload))
                if fits:
                    while not got:
                        got += await conn.receive_messages()
                    assert got == [payload]
                else:
                    with pytest.raises(FeedError, match="exceeds limit of 1048576 bytes"):
                        while True:
                            await conn.receive_messages()
                    nursery.cancel_scope.cancel()


# -- REST -----------------------------------------------------------------------------------------------


def ticker_body(trades: list[dict[str, str]]) -> bytes:
    return msgspec.json.encode({"trades": trades, "best_bid": "1", "best_ask": "2"})


def test_ticker_trades_store_the_taker_side() -> None:
    body = ticker_body([trade(12, "SELL"), trade(11, "BUY")])
    got = parse_ticker(body, "coinbase", "BTC-USD", 5, Values())
    assert [(t.id, t.side, t.ts) for t in got] == [("11", "sell", TS_US), ("12", "buy", TS_US)]
    with pytest.raises(ValueError, match="not understood"):
        parse_ticker(b'{"trades":[{"trade_id":"x"}]}', "coinbase", "BTC-USD", 5, Values())


async def test_fill_gap_asks_the_gaps_window_and_keeps_only_its_ids() -> None:
    asked: list[RestRequest] = []

    async def fetch(request: RestRequest) -> bytes:
        asked.append(request)
        return ticker_body([trade(i, "BUY") for i in range(130, 99, -1)])

    gap = TradeGap("coinbase", "spot", "BTC-USD", "BTC-USD", 105, 110, TS_US - 3_000_000, TS_US)
    pages = [page async for page in fill_gap(gap, fetch)]
    assert [[t.id for t in page] for page in pages] == [["105", "106", "107", "108", "109"]]
    assert asked == [
        RestRequest(
            "/api/v3/brokerage/market/products/BTC-USD/ticker",
            {"limit": TICKER_LIMIT, "start": str(TS_US // 1_000_000 - 3), "end": str(TS_US // 1_000_000 + 1)},
            1,
        )
    ]


def test_ticker_messages_are_whole_snapshots() -> None:
    decoder = VENUE.decoder("spot", {"BTC-USD": "BTC-USD"})
    tick = {
        "type": "ticker",
        "product_id": "BTC-USD",
        "price": "65000.01",
        "volume_24_h": "1234.5",
        "low_24_h": "64000",
        "high_24_h": "66000",
        "best_bid": "65000.00",
        "best_bid_quantity": "0.25",
        "best_ask": "65000.02",
        "best_ask_quantity": "1.5",
    }
    out = decode(decoder, envelope("ticker", 4, [{"type": "update", "tickers": [tick]}]))
    (ticker,) = out.tickers
    assert (ticker.symbol, ticker.ts, ticker.recv_ts, ticker.snapshot) == ("BTC-USD", TS_US, 99, True)
    assert (ticker.bid, ticker.bid_size, ticker.ask, ticker.ask_size, ticker.last, ticker.volume_24h) == (
        Decimal("65000.00"),
        Decimal("0.25"),
        Decimal("65000.02"),
        Decimal("1.5"),
        Decimal("65000.01"),
        Decimal("1234.5"),
    )
    plan = VENUE.connections("spot", ["BTC-USD"], ("ticker",), 0, None)[0]
    assert (
        plan.topics == ("ticker:BTC-USD",) and VENUE.parse_topic("spot", plan.topics[0]).channel == "ticker"
    )
    bodies = [msgspec.json.decode(r.payload) for r in Session("spot", plan.topics).subscribe_requests()]
    assert bodies[1] == {"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "ticker"}
