"""Ticker frames on their one-pass paths: the same records as the general path, prices shared with the
book, and the ever-changing 24 h volume kept out of the shared decimal table."""

from __future__ import annotations

from decimal import Decimal

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
