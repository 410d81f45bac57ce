"""Ticker frames on their one-pass paths: the same records as the general path, prices shared with the
book, and the ever-changing 24 h volume kept out of the shared decimal table."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from marketflow.exchanges import binance, bybit
from marketflow.exchanges.base import Decoded, FrameDecoder
from marketflow.exchanges.bybit.frames import DECIMAL_INTERN_MAX

BYBIT_TICKER = (
    b'{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","lastPrice":"65000.10",'
    b'"volume24h":"%d.125","bid1Price":"64999.90","bid1Size":"2.502","ask1Price":"65000.10",'
    b'"ask1Size":"8.718","markPrice":"65000.05"},"cs":70000000000,"ts":1765000000002}'
)
BYBIT_BOOK = (
    b'{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":1765000000000,"data":{"s":"BTCUSDT",'
    b'"b":[["64999.90","1.000"]],"a":[["65000.10","2.000"]],"u":1000,"seq":7},"cts":1765000000000}'
)
BINANCE_BOOK_TICKER = (
    b'{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":9924360161244,"s":"BTCUSDT",'
    b'"b":"68005.00","B":"2.394","a":"68005.10","A":"0.857","T":1771263510337,"E":1771263510337}}'
)
BINANCE_DEPTH = (
    b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1771263510337,"T":1771263510336,'
    b'"s":"BTCUSDT","U":10,"u":12,"pu":9,"b":[["68005.00","1.000"]],"a":[["68005.10","3.000"]]}}'
)


def _bybit_decode(decoder: FrameDecoder, frames: list[bytes]) -> Decoded:
    out = Decoded()
    decoder.decode(frames, 7, out)
    return out


def test_bybit_ticker_one_pass_equals_the_general_path() -> None:
    frame = BYBIT_TICKER % 691865
    # The same frame with its keys in another order takes the envelope-then-data path.
    reordered = (
        b'{"type":"delta","ts":1765000000002,"topic":"tickers.BTCUSDT","data":'
        + frame[frame.index(b'"data":') + 7 : frame.index(b',"cs"')]
        + b"}"
    )
    symbols = {"BTCUSDT": "BTC-USDT-PERP"}
    fast = _bybit_decode(bybit.VENUE.decoder("linear", symbols), [frame])
    slow = _bybit_decode(bybit.VENUE.decoder("linear", symbols), [reordered])
    assert fast.tickers == slow.tickers and fast.derivatives == slow.derivatives
    (ticker,) = fast.tickers
    assert (ticker.bid, ticker.ask, ticker.last, ticker.volume_24h) == (
        Decimal("64999.90"),
        Decimal("65000.10"),
        Decimal("65000.10"),
        Decimal("691865.125"),
    )
    assert not ticker.snapshot and fast.derivatives[0].mark_price == Decimal("65000.05")


def test_bybit_ticker_volumes_do_not_crowd_the_books_prices_out_of_the_shared_table() -> None:
    decoder = bybit.VENUE.decoder("linear", {"BTCUSDT": "BTC-USDT-PERP"})
    book = _bybit_decode(decoder, [BYBIT_BOOK]).books[0]
    bid_price = book.bids[0][0]
    # More tickers than the table holds, each with a new 24 h volume (as every trade changes it).
    frames = [BYBIT_TICKER % n for n in range(DECIMAL_INTERN_MAX + 10)]
    tickers = _bybit_decode(decoder, frames).tickers
    assert len(tickers) == len(frames) and decoder.counters.malformed == 0
    assert tickers[-1].volume_24h == Decimal(f"{len(frames) - 1}.125")
    # The book's price object is still the one tickers get: the table was never flushed by volumes.
    assert tickers[-1].bid is bid_price


def test_bybit_bad_volume_on_the_one_pass_path_is_malformed() -> None:
    decoder = bybit.VENUE.decoder("linear", {"BTCUSDT": "BTC-USDT-PERP"})
    out = _bybit_decode(decoder, [BYBIT_TICKER.replace(b"%d.125", b"NaN")])
    assert (out.tickers, out.derivatives, decoder.counters.malformed) == ([], [], 1)


def test_binance_book_ticker_shares_the_books_price_objects() -> None:
    decoder = binance.VENUE.decoder("usdm", {"BTCUSDT": "BTC-USDT-PERP"})
    out = Decoded()
    decoder.decode([BINANCE_DEPTH, BINANCE_BOOK_TICKER], 7, out)
    (update,) = out.books
    (ticker,) = out.tickers
    assert ticker.bid is update.bids[0][0] and ticker.ask is update.asks[0][0]
    assert (ticker.bid_size, ticker.ask_size) == (Decimal("2.394"), Decimal("0.857"))
    assert ticker.ts == 1771263510337000


def test_binance_book_ticker_one_pass_equals_the_general_path() -> None:
    data = BINANCE_BOOK_TICKER[BINANCE_BOOK_TICKER.index(b'"data":') + 7 : -1]
    reordered = b'{"data":' + data + b',"stream":"btcusdt@bookTicker"}'
    got = []
    for frame in (BINANCE_BOOK_TICKER, reordered):
        decoder = binance.VENUE.decoder("usdm", {"BTCUSDT": "BTC-USDT-PERP"})
        out = Decoded()
        decoder.decode([frame], 7, out)
        got.append(out.tickers)
    assert got[0] == got[1] and len(got[0]) == 1
    bad = binance.VENUE.decoder("usdm", {"BTCUSDT": "BTC-USDT-PERP"})
    out = Decoded()
    bad.decode([BINANCE_BOOK_TICKER.replace(b'"2.394"', b'"x"')], 7, out)
    assert (out.tickers, bad.counters.malformed) == ([], 1)


# -- OKX and Coinbase ------------------------------------------------------------------------------------

OKX_TICKERS = (
    b'{"arg":{"channel":"tickers","instId":"BTC-USDT-SWAP"},"data":[{"instType":"SWAP",'
    b'"instId":"BTC-USDT-SWAP","last":"65000.1","lastSz":"1","askPx":"65000.1","askSz":"12",'
    b'"bidPx":"64999.9","bidSz":"7","open24h":"64000.1","high24h":"66000.0","low24h":"63000.5",'
    b'"volCcy24h":"123456.78","vol24h":"%d","sodUtc0":"64500.2","sodUtc8":"64800.3","ts":"1765000000002"}]}'
)
OKX_BOOK = (
    b'{"arg":{"channel":"books","instId":"BTC-USDT-SWAP"},"action":"snapshot","data":[{"asks":'
    b'[["65000.1","3","0","1"]],"bids":[["64999.9","4","0","1"]],"ts":"1765000000000","checksum":0,'
    b'"prevSeqId":-1,"seqId":10}]}'
)
COINBASE_TICKER = (
    b'{"channel":"ticker","client_id":"","timestamp":"2025-12-06T05:46:40.020000000Z","sequence_num":%d,'
    b'"events":[{"type":"update","tickers":[{"type":"ticker","product_id":"BTC-USD","price":"65000.30",'
    b'"volume_24_h":"%d.95503864","low_24_h":"63000.01","high_24_h":"66000.99","best_bid":"64999.90",'
    b'"best_bid_quantity":"2.92639867","best_ask":"65000.30","best_ask_quantity":"3.32835910"}]}]}'
)
COINBASE_BOOK = (
    b'{"channel":"l2_data","client_id":"","timestamp":"2025-12-06T05:46:40.000000000Z","sequence_num":0,'
    b'"events":[{"type":"snapshot","product_id":"BTC-USD","updates":[{"side":"bid","event_time":'
    b'"1970-01-01T00:00:00Z","price_level":"64999.90","new_quantity":"1.5"},{"side":"offer",'
    b'"event_time":"1970-01-01T00:00:00Z","price_level":"65000.30","new_quantity":"2.5"}]}]}'
)


def test_okx_ticker_one_pass_equals_the_general_path_and_keeps_volumes_out_of_the_table() -> None:
    from marketflow.exchanges import okx
    from marketflow.exchanges.okx.frames import DECIMAL_INTERN_MAX as OKX_MAX

    frame = OKX_TICKERS % 2222
    reordered = (
        b'{"data":'
        + frame[frame.index(b'"data":') + 7 : -1]
        + b","
        + frame[1 : frame.index(b',"data"')]
        + b"}"
    )
    got = []
    for one in (frame, reordered):
        decoder = okx.VENUE.decoder("swap", {"BTC-USDT-SWAP": "BTC-USDT-PERP"})
        out = Decoded()
        decoder.decode([one], 7, out)
        got.append(out.tickers)
    assert got[0] == got[1]
    assert got[0][0].ts == 1765000000002000 and got[0][0].volume_24h == Decimal("2222")
    decoder = okx.VENUE.decoder("swap", {"BTC-USDT-SWAP": "BTC-USDT-PERP"})
    out = Decoded()
    decoder.decode([OKX_BOOK, *(OKX_TICKERS % n for n in range(OKX_MAX + 10))], 7, out)
    assert len(out.tickers) == OKX_MAX + 10 and decoder.counters.malformed == 0
    assert out.tickers[-1].bid is out.books[0].bids[0][0]  # the book's price, never flushed by volumes


def test_coinbase_ticker_volumes_stay_out_of_the_shared_table() -> None:
    from marketflow.exchanges import coinbase
    from marketflow.exchanges.coinbase.frames import DECIMAL_INTERN_MAX as COINBASE_MAX

    decoder = coinbase.VENUE.decoder("spot", {"BTC-USD": "BTC-USD"})
    out = Decoded()
    frames = [COINBASE_BOOK, *(COINBASE_TICKER % (n + 1, n) for n in range(COINBASE_MAX + 10))]
    decoder.decode(frames, 7, out)
    assert len(out.tickers) == COINBASE_MAX + 10 and decoder.counters.malformed == 0
    last = out.tickers[-1]
    assert last.volume_24h == Decimal(f"{COINBASE_MAX + 9}.95503864") and last.snapshot
    assert last.ts == 1_765_000_000_020_000  # 2025-12-06T05:46:40.020000000Z in µs
    assert last.bid is out.books[0].bids[0][0]


def test_coinbase_times_on_the_fast_path_equal_the_checked_path() -> None:
    from marketflow.exchanges.coinbase.frames import Values

    fast = Values()
    fast.us("2026-08-14T20:42:00Z")  # the minute is known from here on
    for text in (
        "2026-08-14T20:42:27.265123456Z",
        "2026-08-14T20:42:27.2Z",
        "2026-08-14T20:42:27.265123Z",
        "2026-08-14T20:42:59.999999999Z",
        "2026-08-14T20:42:27Z",
    ):
        assert fast.us(text) == Values()._parse_us_checked(text), text
    for bad in ("2026-08-14T20:42:2x.1Z", "2026-08-14T20:42:27.12a4Z", "2026-08-14T20:42:27.1"):
        with pytest.raises(msgspec.DecodeError):
            fast.us(bad)
