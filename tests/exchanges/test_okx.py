"""OKX v5: symbols, frame decoding, the book's seqId chain and checksum, session events, REST parsers.

Frames are shaped as OKX sends them (PROTOCOLS.md §8; the checksum examples are OKX's documentation's).
"""

from __future__ import annotations

import gc
import json
import zlib
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from marketflow.exchanges.base import Ack, DataFrame, Decoded, Pong, Reconnect, RestRequest, TradeGap
from marketflow.exchanges.okx import VENUE, OkxBook, OkxBookUpdate, Session, checksum
from marketflow.exchanges.okx.frames import FrameDecoder
from marketflow.exchanges.okx.rest import parse_history_trades, parse_instruments
from marketflow.exchanges.orderbook import BookState, book_view
from marketflow.model import SymbolError

SYMBOLS = {"BTC-USDT": "BTC-USDT", "BTC-USDT-SWAP": "BTC-USDT-PERP"}


def signed(text: str) -> int:
    value = zlib.crc32(text.encode())
    return value - 2**32 if value >= 2**31 else value


def trade_frame(inst: str, *trades: tuple[int, str, str, str, int, int]) -> bytes:
    data = [
        {
            "instId": inst,
            "tradeId": str(i),
            "px": px,
            "sz": sz,
            "side": side,
            "ts": str(ts),
            "count": str(count),
            "source": "0",
            "seqId": i,
        }
        for i, px, sz, side, ts, count in trades
    ]
    return json.dumps(
        {"arg": {"channel": "trades", "instId": inst}, "data": data}, separators=(",", ":")
    ).encode()


def book_frame(
    inst: str,
    action: str,
    bids: list[list[str]],
    asks: list[list[str]],
    *,
    seq: int | None = None,
    prev: int | None = None,
    checksum: int | None = 0,
    channel: str = "books",
) -> bytes:
    data: dict[str, Any] = {"asks": asks, "bids": bids, "ts": "1700000000123"}
    if checksum is not None:
        data["checksum"] = checksum
    if seq is not None:
        data["prevSeqId"] = prev
        data["seqId"] = seq
    frame: dict[str, Any] = {"arg": {"channel": channel, "instId": inst}}
    if channel == "books":
        frame["action"] = action
    frame["data"] = [data]
    return json.dumps(frame, separators=(",", ":")).encode()


def decode(decoder: FrameDecoder, *frames: bytes) -> Decoded:
    out = Decoded()
    decoder.decode(list(frames), 5, out)
    return out


def books(*frames: bytes) -> list[OkxBookUpdate]:
    out = decode(FrameDecoder("okx", "spot", SYMBOLS), *frames)
    assert all(isinstance(b, OkxBookUpdate) for b in out.books)
    return out.books  # type: ignore[return-value]


# -- symbols ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("market", "native", "normalized"),
    [
        ("spot", "BTC-USDT", "BTC-USDT"),
        ("swap", "BTC-USDT-SWAP", "BTC-USDT-PERP"),
        ("swap", "BTC-USD-SWAP", "BTC-USD-PERP"),
        ("futures", "BTC-USD-250627", "BTC-USD-20250627"),
    ],
)
def test_symbols_both_ways(market: str, native: str, normalized: str) -> None:
    assert VENUE.normalize_symbol(market, native) == normalized
    assert VENUE.normalize_symbol(market, normalized.lower()) == normalized
    assert VENUE.native_symbol(market, normalized) == native
    assert VENUE.native_symbol(market, native) == native


def test_bad_symbols_say_what_is_wrong() -> None:
    with pytest.raises(SymbolError, match="not an okx swap symbol"):
        VENUE.normalize_symbol("swap", "BTC-USD-250627")
    with pytest.raises(SymbolError, match="expiry"):
        VENUE.normalize_symbol("futures", "BTC-USD-27JUN")
    with pytest.raises(ValueError, match="okx has no market 'linear'"):
        VENUE.normalize_symbol("linear", "BTC-USDT")


def test_non_ascii_letters_and_digits_are_refused_by_name() -> None:
    """`str.isalnum` and `str.isdigit` take any script: a Cyrillic В made 'ВTC-USDT' an instrument, and
    Arabic-Indic digits an expiry."""
    cases = {
        ("spot", "\u0412TC-USDT"): "U+0412 (CYRILLIC CAPITAL LETTER VE)",
        ("swap", "BTC-USDT-\u0405WAP"): "U+0405 (CYRILLIC CAPITAL LETTER DZE)",
        ("futures", "BTC-USD-\u0662\u0665\u0660\u0666\u0662\u0667"): "U+0662 (ARABIC-INDIC DIGIT TWO)",
    }
    for (market, symbol), named in cases.items():
        with pytest.raises(SymbolError) as refused:
            VENUE.normalize_symbol(market, symbol)
        assert (
            str(refused.value)
            == f"{symbol!r} holds the non-ASCII character {named}; symbols are ASCII letters and digits"
        )


# -- trades -------------------------------------------------------------------------------------------------


def test_trades_keep_exact_strings_and_the_taker_side() -> None:
    decoder = FrameDecoder("okx", "spot", SYMBOLS)
    out = decode(
        decoder, trade_frame("BTC-USDT", (130639474, "42219.90", "0.12060306", "sell", 1630048897897, 1))
    )
    (trade,) = out.trades
    assert (trade.exchange, trade.symbol, trade.id, trade.side) == ("okx", "BTC-USDT", "130639474", "sell")
    assert str(trade.price) == "42219.90" and str(trade.amount) == "0.12060306"
    assert (trade.ts, trade.recv_ts) == (1630048897897000, 5)


def test_a_repeated_or_older_trade_is_a_duplicate() -> None:
    """The trade OKX pushes at subscription (possibly older) and a reconnect's overlap are dropped."""
    decoder = FrameDecoder("okx", "spot", SYMBOLS)
    decode(decoder, trade_frame("BTC-USDT", (100, "1", "1", "buy", 1, 1), (101, "1", "1", "buy", 2, 1)))
    out = decode(
        decoder,
        trade_frame("BTC-USDT", (101, "1", "1", "buy", 2, 1)),
        trade_frame("BTC-USDT", (99, "1", "1", "buy", 0, 1)),
    )
    assert out.trades == [] and out.trade_gaps == []
    assert decoder.counters.duplicates == 2


def test_count_covers_the_ids_before_the_trade_id_so_only_a_real_jump_is_a_gap() -> None:
    decoder = FrameDecoder("okx", "swap", SYMBOLS)
    frames = [
        trade_frame("BTC-USDT-SWAP", (200, "1", "3", "buy", 1000, 1)),
        trade_frame("BTC-USDT-SWAP", (203, "1", "2", "buy", 1001, 3)),  # 201..203: no gap
        trade_frame("BTC-USDT-SWAP", (210, "1", "2", "sell", 1005, 2)),  # 209..210: 204..208 missing
    ]
    out = decode(decoder, *frames)
    assert [t.id for t in out.trades] == ["200", "203", "210"]
    assert out.trade_gaps == [
        TradeGap("okx", "swap", "BTC-USDT-PERP", "BTC-USDT-SWAP", 204, 209, 1001000, 1005000)
    ]


def test_malformed_trade_frames_are_counted_and_skipped() -> None:
    decoder = FrameDecoder("okx", "spot", SYMBOLS)
    good = trade_frame("BTC-USDT", (1, "1", "1", "buy", 1, 1))
    bad_price = good.replace(b'"px":"1"', b'"px":"abc"')
    no_side = good.replace(b'"side":"buy",', b"")
    out = decode(decoder, bad_price, no_side, b'{"arg":{"channel":"trades"', good)
    assert [t.id for t in out.trades] == ["1"]
    assert decoder.counters.malformed == 3


def test_reordered_keys_take_the_slow_path() -> None:
    frame = (
        b'{"data":[{"instId":"BTC-USDT","tradeId":"7","px":"2","sz":"3","side":"buy","ts":"9"}],'
        b'"arg":{"channel":"trades","instId":"BTC-USDT"}}'
    )
    assert isinstance(Session("spot", []).control(frame), DataFrame)
    out = decode(FrameDecoder("okx", "spot", SYMBOLS), frame)
    assert [(t.id, str(t.price)) for t in out.trades] == [("7", "2")]


# -- books ---------------------------------------------------------------------------------------------------


def test_checksum_matches_okx_documentation_examples() -> None:
    assert checksum([["3366.1", "7"], ["3366", "6"]], [["3366.8", "9"], ["3368", "8"]]) == -1881014294
    assert checksum([["3366.1", "7"]], [["3366.8", "9"], ["3368", "8"], ["3372", "8"]]) == 831078360


def test_levels_third_field_is_not_an_order_count() -> None:
    (snap,) = books(
        book_frame("BTC-USDT", "snapshot", [["100", "2", "0", "0"]], [["101", "1", "0", "0"]], seq=5, prev=-1)
    )
    book = OkxBook()
    assert book.on_update(snap) is None
    assert book_view(book) == ([(Decimal("100"), Decimal("2"))], [(Decimal("101"), Decimal("1"))])


def test_decoded_book_levels_hold_nothing_the_garbage_collector_tracks() -> None:
    # Issue 20: as `list[str]` every level was a tracked list (~10 a delta); updates alive across the
    # hand-off to the book keeper were promoted and re-walked by generation 1 and 2 collections.
    (update,) = books(
        book_frame(
            "BTC-USDT",
            "update",
            [["100", "2", "0", "3"], ["99.50", "0"]],
            [["101", "1", "0", "1"]],
            seq=6,
            prev=5,
        )
    )
    raw = [*update.raw_bids, *update.raw_asks]
    assert [(level.px, level.sz) for level in raw] == [("100", "2"), ("99.50", "0"), ("101", "1")]
    assert not any(gc.is_tracked(level) for level in raw)
    assert not gc.is_tracked(update)


def test_a_book_level_without_a_size_is_a_malformed_frame() -> None:
    decoder = FrameDecoder("okx", "spot", SYMBOLS)
    good = book_frame("BTC-USDT", "update", [["99", "1", "0", "1"]], [], seq=2, prev=1)
    out = decode(decoder, book_frame("BTC-USDT", "update", [["99"]], [], seq=2, prev=1), good)
    assert len(out.books) == 1 and decoder.counters.malformed == 1
    assert "length 2" in (decoder.counters.last_error or "")


def test_seq_chain_keepalive_reset_and_break() -> None:
    bids = [["100", "2", "0", "1"]]
    asks = [["101", "1", "0", "1"]]
    snap, up, keep, reset, after, broken = books(
        book_frame("BTC-USDT", "snapshot", bids, asks, seq=10, prev=-1),
        book_frame("BTC-USDT", "update", [["99", "1", "0", "1"]], [], seq=17, prev=10),
        book_frame("BTC-USDT", "update", [], [], seq=17, prev=17),
        book_frame("BTC-USDT", "update", [["98", "1", "0", "1"]], [], seq=3, prev=17),
        book_frame("BTC-USDT", "update", [["98", "0", "0", "0"]], [], seq=50, prev=3),
        book_frame("BTC-USDT", "update", [["97", "1", "0", "1"]], [], seq=90, prev=60),
    )
    book = OkxBook()
    for update in (snap, up, keep, reset, after):
        assert book.on_update(update) is None
    assert (book.keepalives, book.seq_resets, book.last_id) == (1, 1, 50)
    assert book.book.depth() == (2, 1)
    gap = book.on_update(broken)
    assert gap is not None and "prevSeqId 60 is not the last seqId 50" in gap.reason
    assert book.state is BookState.RESYNCING and book_view(book) is None
    # Updates wait for a fresh snapshot; the snapshot brings the book back.
    assert book.on_update(after) is None and book.state is BookState.RESYNCING
    assert book.on_update(snap) is None and book.state is BookState.SYNCED
    # A keep-alive repeats the last seqId; one that does not shows lost messages.
    (stale_keepalive,) = books(book_frame("BTC-USDT", "update", [], [], seq=12, prev=12))
    gap = book.on_update(stale_keepalive)
    assert gap is not None and "keep-alive seqId 12 is not the last seqId 10" in gap.reason


def test_checksum_over_the_received_strings_not_the_decimals() -> None:
    bids = [["65000.10", "1.50", "0", "1"], ["64999.9", "2", "0", "1"]]
    asks = [["65000.2", "0.010", "0", "1"]]
    exact = signed("65000.10:1.50:65000.2:0.010:64999.9:2")
    assert exact != signed("65000.1:1.5:65000.2:0.01:64999.9:2")
    (snap,) = books(book_frame("BTC-USDT", "snapshot", bids, asks, seq=1, prev=-1, checksum=exact))
    book = OkxBook()
    assert book.on_update(snap) is None and book.checksums_verified == 1
    # The same price written differently replaces the level's string: the checksum follows what was sent.
    moved = signed("65000.1:1.5:65000.2:0.010:64999.9:2")
    (up,) = books(
        book_frame("BTC-USDT", "update", [["65000.1", "1.5", "0", "1"]], [], seq=2, prev=1, checksum=moved)
    )
    assert book.on_update(up) is None and book.checksums_verified == 2


def test_a_wrong_checksum_is_a_gap_and_zero_is_not_checked() -> None:
    bids = [["100", "2", "0", "1"]]
    asks = [["101", "1", "0", "1"]]
    good = signed("100:2:101:1")
    snap, zero, wrong = books(
        book_frame("BTC-USDT", "snapshot", bids, asks, seq=1, prev=-1, checksum=good),
        book_frame("BTC-USDT", "update", [["100", "3", "0", "1"]], [], seq=2, prev=1, checksum=0),
        book_frame("BTC-USDT", "update", [["100", "4", "0", "1"]], [], seq=3, prev=2, checksum=good),
    )
    book = OkxBook()
    assert book.on_update(snap) is None
    assert book.on_update(zero) is None and book.checksums_verified == 1
    gap = book.on_update(wrong)
    assert gap is not None and gap.reason.startswith("checksum ") and book.checksum_failures == 1
    assert book_view(book) is None


def test_a_book_whose_snapshot_carries_no_checksum_keeps_no_strings_and_applies_alike() -> None:
    # Live OKX sends checksum 0 since 2026-06: the `px:sz` strings are then not kept (half the apply cost).
    bids = [["100", "2", "0", "1"], ["99", "1", "0", "1"]]
    asks = [["101", "1", "0", "1"]]
    snap, up = books(
        book_frame("BTC-USDT", "snapshot", bids, asks, seq=1, prev=-1),
        book_frame("BTC-USDT", "update", [["99", "0", "0", "0"]], [["102", "5", "0", "1"]], seq=2, prev=1),
    )
    book = OkxBook()
    assert book.on_update(snap) is None and book.on_update(up) is None
    assert (book._raw_bids, book._raw_asks, book.checksums_verified) == ({}, {}, 0)
    assert book_view(book) == (
        [(Decimal("100"), Decimal("2"))],
        [(Decimal("101"), Decimal("1")), (Decimal("102"), Decimal("5"))],
    )


def test_a_checksum_after_a_snapshot_without_one_resyncs_once_then_is_verified() -> None:
    # The strings were not kept since that snapshot: the book cannot verify, so it resyncs, and keeps them
    # from the next snapshot on even when that one carries no checksum either (no resync loop).
    bids = [["100", "2", "0", "1"]]
    asks = [["101", "1", "0", "1"]]
    after = signed("100:3:101:1")
    snap, up, snap2, up2, wrong = books(
        book_frame("BTC-USDT", "snapshot", bids, asks, seq=1, prev=-1),
        book_frame("BTC-USDT", "update", [["100", "3", "0", "1"]], [], seq=2, prev=1, checksum=after),
        book_frame("BTC-USDT", "snapshot", bids, asks, seq=5, prev=-1),
        book_frame("BTC-USDT", "update", [["100", "3", "0", "1"]], [], seq=6, prev=5, checksum=after),
        book_frame("BTC-USDT", "update", [["100", "4", "0", "1"]], [], seq=7, prev=6, checksum=after),
    )
    book = OkxBook()
    assert book.on_update(snap) is None
    gap = book.on_update(up)
    assert gap is not None and "the snapshot carried none" in gap.reason
    assert book.state is BookState.RESYNCING and book.checksum_failures == 0
    assert book.on_update(snap2) is None and book.on_update(up2) is None
    assert book.checksums_verified == 1 and book.state is BookState.SYNCED
    wrong_gap = book.on_update(wrong)
    assert wrong_gap is not None and book.checksum_failures == 1


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-inf", "sNaN", "-1", "-0", "1x", ""])
@pytest.mark.parametrize("where", ["price", "size"])
def test_a_book_level_that_is_no_finite_non_negative_decimal_rejects_the_frame(bad: str, where: str) -> None:
    decoder = FrameDecoder("okx", "spot", SYMBOLS)
    level = [bad, "1", "0", "1"] if where == "price" else ["99", bad, "0", "1"]
    good = book_frame("BTC-USDT", "update", [["99", "1", "0", "1"]], [], seq=2, prev=1)
    out = decode(decoder, book_frame("BTC-USDT", "update", [level], [], seq=2, prev=1), good)
    assert len(out.books) == 1 and decoder.counters.malformed == 1
    assert "decimal" in (decoder.counters.last_error or "")


def test_messages_without_seq_ids_are_checked_by_checksum_alone() -> None:
    snap, up, bad = books(
        book_frame("BTC-USDT", "snapshot", [["100", "2"]], [["101", "1"]], checksum=signed("100:2:101:1")),
        book_frame("BTC-USDT", "update", [["99", "1"]], [], checksum=signed("100:2:101:1:99:1")),
        book_frame("BTC-USDT", "update", [["98", "1"]], [], checksum=signed("100:2:101:1:99:1")),
    )
    assert snap.prev_id is None and up.prev_id is None
    book = OkxBook()
    assert book.on_update(snap) is None and book.on_update(up) is None
    assert book.on_update(bad) is not None


def test_books5_messages_are_whole_books() -> None:
    first, second = books(
        book_frame(
            "BTC-USDT",
            "",
            [["100", "2", "0", "1"]],
            [["101", "1", "0", "1"]],
            channel="books5",
            checksum=None,
        ),
        book_frame(
            "BTC-USDT", "", [["99", "2", "0", "1"]], [["102", "1", "0", "1"]], channel="books5", checksum=None
        ),
    )
    assert first.snapshot and second.snapshot
    book = OkxBook()
    assert book.on_update(first) is None and book.on_update(second) is None
    assert book_view(book) == ([(Decimal("99"), Decimal("2"))], [(Decimal("102"), Decimal("1"))])


# -- session ------------------------------------------------------------------------------------------


def test_session_requests_acks_errors_pong_and_notice() -> None:
    session = Session("spot", ["trades:BTC-USDT", "books:BTC-USDT"])
    requests = session.subscribe_requests()
    assert [r.topics for r in requests] == [("trades:BTC-USDT",), ("books:BTC-USDT",)]
    assert json.loads(requests[0].payload) == {
        "id": requests[0].req_id,
        "op": "subscribe",
        "args": [{"channel": "trades", "instId": "BTC-USDT"}],
    }
    again = session.resubscribe_requests(["books:BTC-USDT"])
    assert [json.loads(r.payload)["op"] for r in again] == ["unsubscribe", "subscribe"]
    ack = (
        b'{"id":"subsc1","event":"subscribe","arg":{"channel":"trades","instId":"BTC-USDT"},'
        b'"connId":"a4d3ae55"}'
    )
    assert session.control(ack) == Ack("subsc1", True, "subscribe")
    error = (
        b'{"id":"subsc2","event":"error","code":"60018",'
        b'"msg":"Wrong URL or channel:books,instId:BTC-XYZ doesn\'t exist","connId":"a4d3ae55"}'
    )
    assert session.control(error) == Ack(
        "subsc2",
        False,
        "code 60018: Wrong URL or channel:books,instId:BTC-XYZ doesn't exist",
        ("books:BTC-XYZ",),
    )
    assert session.heartbeat() == b"ping" and session.control(b"pong") == Pong()
    notice = (
        b'{"event":"notice","code":"64008",'
        b'"msg":"The connection will soon be closed for a service upgrade.","connId":"a4d3ae55"}'
    )
    assert isinstance(session.control(notice), Reconnect)
    assert session.is_data(trade_frame("BTC-USDT", (1, "1", "1", "buy", 1, 1)))
    assert not session.is_data(ack)


# -- REST ---------------------------------------------------------------------------------------------

INSTRUMENTS = json.dumps(
    {
        "code": "0",
        "msg": "",
        "data": [
            {
                "instType": "SWAP",
                "instId": "BTC-USDT-SWAP",
                "ctVal": "0.01",
                "ctMult": "1",
                "ctValCcy": "BTC",
                "ctType": "linear",
                "tickSz": "0.1",
                "lotSz": "0.01",
                "state": "live",
            },
            {
                "instType": "SWAP",
                "instId": "BTC-USD-SWAP",
                "ctVal": "100",
                "ctMult": "1",
                "ctValCcy": "USD",
                "ctType": "inverse",
                "tickSz": "0.1",
                "lotSz": "1",
                "state": "live",
            },
        ],
    }
).encode()


async def test_instruments_give_contract_units() -> None:
    async def fetch(request: RestRequest) -> bytes:
        assert (request.path, request.params) == ("/api/v5/public/instruments", {"instType": "SWAP"})
        return INSTRUMENTS

    linear, inverse = await VENUE.instruments(
        "swap", ["BTC-USDT-SWAP", "BTC-USD-SWAP", "ETH-USD-SWAP"], fetch
    )
    assert (linear.amount_unit, linear.contract_value, linear.contract_currency, linear.inverse) == (
        "contracts",
        Decimal("0.01"),
        "BTC",
        False,
    )
    assert (inverse.contract_value, inverse.contract_currency, inverse.inverse) == (
        Decimal("100"),
        "USD",
        True,
    )
    assert parse_instruments(INSTRUMENTS)["BTC-USD-SWAP"].lot_size == Decimal("1")
    with pytest.raises(ValueError, match="code 50011"):
        parse_instruments(b'{"code":"50011","msg":"Too Many Requests","data":[]}')


def history(ids: range) -> bytes:
    data = [
        {
            "instId": "BTC-USDT",
            "side": "buy",
            "sz": "0.5",
            "px": "10.0",
            "tradeId": str(i),
            "ts": str(1000 + i),
        }
        for i in sorted(ids, reverse=True)
    ]
    return json.dumps({"code": "0", "msg": "", "data": data}).encode()


async def test_fill_gap_pages_down_to_the_gap_and_keeps_only_its_ids() -> None:
    asked: list[dict[str, str | int]] = []

    async def fetch(request: RestRequest) -> bytes:
        asked.append(request.params)
        after = int(request.params["after"])
        return history(range(max(0, after - 100), after))

    gap = TradeGap("okx", "spot", "BTC-USDT", "BTC-USDT", 1000, 1250, 1, 2)
    pages: AsyncIterator[list[Any]] = VENUE.fill_gap(gap, fetch)
    got = [t for page in [p async for p in pages] for t in page]
    assert sorted(int(t.id) for t in got) == list(range(1000, 1250))
    assert len(got) == 250
    assert [p["after"] for p in asked] == [1250, 1150, 1050]
    assert all(p["type"] == 1 and p["limit"] == 100 for p in asked)
    assert parse_history_trades(history(range(1, 2)), "okx", "BTC-USDT", 7)[0].ts == 1001000


# -- no WebSocket snapshot: a REST snapshot aligned by seqId (OKX changelog "Delist initial snapshot") ----


def rest_books(bids: list[list[str]], asks: list[list[str]], seq: int | None) -> bytes:
    data: dict[str, Any] = {"asks": asks, "bids": bids, "ts": "1700000000456"}
    if seq is not None:
        data["seqId"] = seq
    return json.dumps({"code": "0", "msg": "", "data": [data]}).encode()


def chain(*links: tuple[int, int, list[list[str]]]) -> list[OkxBookUpdate]:
    """`books` updates (no snapshot) `(prevSeqId, seqId, bids)`."""
    return books(
        *(book_frame("BTC-USDT", "update", bids, [], seq=seq, prev=prev) for prev, seq, bids in links)
    )


def test_updates_without_a_ws_snapshot_are_aligned_with_a_rest_snapshot() -> None:
    book = OkxBook()
    updates = chain(
        (5, 10, [["99", "1", "0", "1"]]),  # before the snapshot: dropped
        (10, 17, [["98", "2", "0", "1"]]),  # bridges it: prevSeqId 10 <= 12 < 17
        (17, 20, [["100", "0", "0", "0"]]),
    )
    assert not book.needs_snapshot()
    for update in updates:
        assert book.on_update(update) is None
    assert book.state is BookState.WAITING and book.needs_snapshot()
    assert book.statistics().buffered == 3
    book.snapshot_requested()
    assert not book.needs_snapshot()
    snapshot = VENUE.parse_snapshot(
        "spot",
        rest_books([["100", "2", "0", "1"], ["99", "5", "0", "1"]], [["101", "1", "0", "1"]], 12),
        "BTC-USDT",
        7,
    )
    assert snapshot.snapshot and snapshot.last_id == 12 and snapshot.ts == 1_700_000_000_456_000
    assert book.on_snapshot(snapshot) is None
    assert book.state is BookState.SYNCED and book.last_id == 20 and not book.needs_snapshot()
    assert book_view(book) == (
        [(Decimal("99"), Decimal("5")), (Decimal("98"), Decimal("2"))],
        [(Decimal("101"), Decimal("1"))],
    )
    stats = book.statistics()
    assert (stats.updates_dropped_stale, stats.updates_applied, stats.buffered) == (1, 2, 0)
    # The chain then goes on from the last applied seqId.
    (more,) = chain((20, 26, [["97", "1", "0", "1"]]))
    assert book.on_update(more) is None and book.last_id == 26


def test_updates_still_on_their_way_when_the_rest_snapshot_was_taken_are_stale_not_a_gap() -> None:
    """The REST answer can overtake the stream (a busy machine): every buffered update is older than the
    snapshot and more older ones are still on their way. The snapshot holds them already: dropped as stale,
    never applied over it; the first newer one bridges it as a buffered one would, and the chain goes on."""
    for snapshot_id, bridge in ((20, (20, 26)), (17, (14, 20))):
        book = OkxBook()
        for update in chain((5, 10, [["99", "1", "0", "1"]])):
            book.on_update(update)
        book.snapshot_requested()
        rest = rest_books(
            [["100", "2", "0", "1"], ["98", "3", "0", "1"]], [["101", "1", "0", "1"]], snapshot_id
        )
        assert book.on_snapshot(VENUE.parse_snapshot("spot", rest, "BTC-USDT", 7)) is None
        assert book.state is BookState.SYNCED and book.last_id == snapshot_id
        late = [(10, 14, [["98", "7", "0", "1"]]), (14, 20, [["100", "9", "0", "1"]])]
        for update in chain(*[link for link in late if link[1] <= snapshot_id]):
            assert book.on_update(update) is None, update
        assert book.state is BookState.SYNCED and book.last_id == snapshot_id
        (bridging,) = chain((*bridge, [["97", "1", "0", "1"]]))
        assert book.on_update(bridging) is None and book.last_id == bridge[1]
        (more,) = chain((bridge[1], 30, [["96", "1", "0", "1"]]))
        assert book.on_update(more) is None and book.last_id == 30
        bids = [(Decimal("100"), Decimal("2")), (Decimal("98"), Decimal("3"))]  # not the stale 9 and 7
        assert book_view(book) == (
            [*bids, (Decimal("97"), Decimal("1")), (Decimal("96"), Decimal("1"))],
            [(Decimal("101"), Decimal("1"))],
        )
        # Once the chain went on, an update from before it is a gap again.
        (old,) = chain((14, 20, []))
        assert book.on_update(old) is not None


def test_a_rest_snapshot_older_than_the_buffer_is_refused_and_asked_again() -> None:
    book = OkxBook()
    for update in chain((10, 17, []), (17, 20, [])):
        book.on_update(update)
    book.snapshot_requested()
    old = VENUE.parse_snapshot("spot", rest_books([["100", "1"]], [["101", "1"]], 8), "BTC-USDT", 7)
    assert book.on_snapshot(old) is None
    assert book.state is BookState.WAITING and book.statistics().snapshots_too_old == 1
    assert book.needs_snapshot()  # fetched again


def test_a_rest_snapshot_the_buffer_does_not_continue_is_a_gap() -> None:
    book = OkxBook()
    for update in chain((10, 11, []), (15, 20, [["98", "1", "0", "1"]])):  # 11..15 was lost
        book.on_update(update)
    snapshot = VENUE.parse_snapshot("spot", rest_books([["100", "1"]], [["101", "1"]], 12), "BTC-USDT", 7)
    gap = book.on_snapshot(snapshot)
    assert gap is not None and "first update after REST snapshot 12 has prevSeqId 15" in gap.reason
    assert book.state is BookState.RESYNCING and book_view(book) is None


def test_a_ws_snapshot_still_starts_the_book_and_a_late_rest_one_is_ignored() -> None:
    book = OkxBook()
    for update in chain((10, 17, [])):
        book.on_update(update)
    book.snapshot_requested()
    (snap,) = books(
        book_frame(
            "BTC-USDT", "snapshot", [["100", "2", "0", "1"]], [["101", "1", "0", "1"]], seq=30, prev=-1
        )
    )
    assert book.on_update(snap) is None and book.state is BookState.SYNCED and book.last_id == 30
    late = VENUE.parse_snapshot("spot", rest_books([["90", "1"]], [["91", "1"]], 25), "BTC-USDT", 7)
    assert book.on_snapshot(late) is None and book.last_id == 30
    assert book.statistics().snapshots_ignored == 1 and book.statistics().buffered == 0
    # The answered request no longer blocks a later one: after a gap, updates ask for a snapshot again.
    (broken,) = chain((40, 45, []))
    assert book.on_update(broken) is not None
    (next_update,) = chain((45, 50, []))
    assert book.on_update(next_update) is None and book.needs_snapshot()


def test_updates_without_seq_ids_are_not_buffered_for_a_rest_snapshot() -> None:
    book = OkxBook()
    (legacy,) = books(book_frame("BTC-USDT", "update", [["99", "1", "0", "1"]], [], checksum=5))
    assert book.on_update(legacy) is None
    assert not book.needs_snapshot() and book.statistics().updates_ignored == 1


def test_the_rest_snapshot_request_and_its_refusals() -> None:
    assert VENUE.snapshot_request("swap", "BTC-USDT-SWAP") == RestRequest(
        "/api/v5/market/books", {"instId": "BTC-USDT-SWAP", "sz": 400}
    )
    with pytest.raises(ValueError, match="no seqId: it cannot be aligned"):
        VENUE.parse_snapshot("spot", rest_books([["100", "1"]], [["101", "1"]], None), "BTC-USDT", 7)
    with pytest.raises(ValueError, match="refused: code 51001"):
        VENUE.parse_snapshot(
            "spot", b'{"code":"51001","msg":"Instrument ID does not exist","data":[]}', "X", 7
        )
    with pytest.raises(ValueError, match="not a decimal"):
        VENUE.parse_snapshot("spot", rest_books([["abc", "1"]], [], 3), "BTC-USDT", 7)
    with pytest.raises(ValueError, match="out of range"):
        VENUE.parse_snapshot("spot", rest_books([["100", "-1"]], [], 3), "BTC-USDT", 7)
