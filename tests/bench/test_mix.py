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
    # Kraken's stream opens with the `instrument` snapshot its checksums need; nothing else is extra.
    assert set(built.kinds) - {"book", "ticker", "trade"} == ({"instrument"} if venue == "kraken" else set())
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
    # 5-30 levels asked per delta (Kraken 1-6); a price drawn twice in one delta counts once.
    low, high = spec.levels
    sizes = [len(u.bids) + len(u.asks) for u in deltas]
    mean = sum(sizes) / len(sizes)
    assert max(sizes) <= high and min(sizes) >= 1 and (low + high) / 2 * 0.6 <= mean <= (low + high) / 2
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


@pytest.mark.parametrize("venue", [v for v in ("coinbase", "kraken") if v in VENUES])
@pytest.mark.parametrize("book_only", [False, True])
def test_coinbase_and_kraken_mix_frames_apply_with_no_error_and_no_resync(
    venue: str, book_only: bool
) -> None:
    built = mixframes.build(venue, 400, book_only=book_only)
    case = mix.Case(built, venue)
    sync = case.venue.synchronizer(built.spec.market)
    decoder = case.venue.decoder(built.spec.market, {built.spec.native: case.symbol})
    out = Decoded()
    for start in range(0, len(built.frames), 64):  # in reads, as the normalizer gets them
        decoder.decode(built.frames[start : start + 64], 0, out)
    assert decoder.counters.malformed == 0 and decoder.counters.ignored == 0
    assert all(sync.on_update(u) is None for u in out.books)
    stats = sync.statistics()
    books = built.kinds.count("book")
    assert (stats.gaps, stats.resyncs, stats.crossed, stats.updates_ignored) == (0, 0, 0, 0)
    assert (stats.snapshots, stats.updates_applied) == (1, books - 1)
    assert stats.state.name == "SYNCED"
    if venue == "kraken":  # the top-10 CRC32 of every message (snapshot included) matched
        assert getattr(sync, "checksums_verified", 0) == books
        assert getattr(sync, "checksum_failures", -1) == 0
    else:  # one connection: sequence_num 0, 1, 2... across every channel
        assert [u.last_id for u in out.books] == [n for n, k in enumerate(built.kinds) if k == "book"]


def test_send_latencies_take_each_frame_from_its_due_time_to_the_read_that_finished_it() -> None:
    from marketflow.bench.mixwss import send_latencies_us

    # 4 frames at 1000 frames/s from t=100.0: due at 100.000, .001, .002, .003; reads done at
    # 100.0015 (frames 0-1), 100.004 (frame 2-3), then a read with nothing new.
    done = [[100.0015, 2], [100.004, 4], [100.005, 4]]
    got = send_latencies_us(done, 100.0, 1000.0, 4)
    assert [round(x) for x in got] == [1500, 500, 2000, 1000]
    assert send_latencies_us(done, 100.0, 1000.0, 3) == got[:3]  # frames past the case's count ignored


def test_the_readme_tables_render_from_a_bench_report() -> None:
    from marketflow.bench import mixmd

    result = mix.run(120, 1, 64, cryptofeed=False, log=lambda _: None)
    result["rows"][0] |= {"cryptofeed_us": 20.0, "vs_cryptofeed": 2.5}
    paced = {"venue": "kraken", "frames_per_s": 19000.4, "cpu_us_per_frame": 17.0, "cpu_pct": 34.2, "loss": 0}
    paced |= {
        "rate_requested": 20000.0,
        "latency_send_applied": {"p50_ms": 14.2, "p99_ms": 68.0, "max_ms": 78.1},
    }
    report = {
        "mix": result,
        "mix_wss": [
            {"venue": "kraken", "stage": "transport", "frames_per_s": 84829.3, "cpu_us_per_frame": 1.734},
            {"venue": "kraken", "stage": "decode", "frames_per_s": 49715.0, "cpu_us_per_frame": 7.25},
        ],
        "mix_paced": [paced | {"book": {"gaps": 0}}],
    }
    text = mixmd.tables(report)
    titles = [line for line in text.splitlines() if line.startswith("**")]
    assert titles == [
        "**Real mix, in process**",
        "**Books only, in process**",
        "**Over wss from the blaster**",
        "**Paced over wss at 20,000 frames/s**",
    ]
    first = result["rows"][0]
    assert f"| bybit mix | {first['book_frames']}:{first['tickers']}:{first['trades']} |" in text
    assert "| 20.00 | **2.5×** |" in text  # cryptofeed's figure and the ratio, bold from 2×
    assert "| binance USD-M books |" in text and "| n/a |  |" in text
    assert "| kraken | 84,829 | 1.73 | 49,715 | 7.25 |" in text
    assert "| kraken | 19,000 | 17.00 | 34% | 14 / 68 / 78 | 0 | 0 |" in text
