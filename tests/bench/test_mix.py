"""The real-mix bench traffic: real shapes in the recorded proportions, continuous books, every stage run."""

from __future__ import annotations

import pytest

from marketflow.bench import mix, mixframes
from marketflow.exchanges import VENUES
from marketflow.exchanges.base import Decoded


@pytest.mark.parametrize("venue", [v for v in mixframes.SPECS if v in VENUES])
def test_mix_frames_decode_as_their_kinds_and_keep_every_book_synced(venue: str) -> None:
    built = mixframes.build(venue, 600)
    spec = built.spec
    assert len(built.frames) == len(built.kinds) == 600
    books, tickers, trades = (built.kinds.count(k) for k in ("book", "ticker", "trade"))
    # The recorded proportions, within sampling noise.
    total = spec.books + spec.tickers + spec.trades
    assert abs(books / 600 - spec.books / total) < 0.08
    assert abs(tickers / 600 - spec.tickers / total) < 0.08
    case = mix.Case(built, venue)
    decoder = case.venue.decoder(spec.market, {spec.native: case.symbol})
    out = Decoded()
    decoder.decode(built.frames, 0, out)
    counters = decoder.counters
    # Every ticker frame is decoded into a Ticker now that the ticker channel exists (none ignored).
    assert (len(out.books), len(out.trades), len(out.tickers)) == (books, trades, tickers)
    assert counters.ignored == 0
    assert counters.malformed == 0 and counters.duplicates == 0
    deltas = [u for u in out.books if not u.snapshot]
    # 5-30 levels asked per delta; a price drawn twice in one delta counts once.
    sizes = [len(u.bids) + len(u.asks) for u in deltas]
    assert max(sizes) <= 30 and min(sizes) >= 1 and 10 <= sum(sizes) / len(sizes) <= 18
    # Every stage checks continuity itself (a gap or a missed update raises).
    assert case.decode(64) >= 0 and case.book(64) >= 0 and case.actors(64) >= 0


def test_okx_mix_carries_checksums_the_book_verifies() -> None:
    built = mixframes.build("okx", 300, book_only=True)
    case = mix.Case(built, "okx")
    sync = case.venue.synchronizer(built.spec.market)
    decoder = case.venue.decoder(built.spec.market, {built.spec.native: case.symbol})
    out = Decoded()
    decoder.decode(built.frames, 0, out)
    assert all(sync.on_update(u) is None for u in out.books)
    assert getattr(sync, "checksums_verified", 0) == 300


def test_the_table_has_a_row_per_case() -> None:
    result = mix.run(200, 1, 64, cryptofeed=False, log=lambda _: None)
    cases = [row["case"] for row in result["rows"]]
    want = [f"{v} {kind}" for v in mixframes.SPECS if v in VENUES for kind in ("mix", "books")]
    if "okx" in VENUES:
        want.insert(want.index("okx books") + 1, "okx books, cs 0")
    assert cases == want
    text = mix.table(result)
    assert all(case in text for case in cases)
    assert all(row["book_updates_per_s_per_core"] > 0 for row in result["rows"])
