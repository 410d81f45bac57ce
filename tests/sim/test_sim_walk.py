"""The simulator's venues quote one shared path per asset (SPEC §15 demo): coherent across venues, each with
its basis and noise, and still deterministic by seed however the tapes are cut."""

from __future__ import annotations

import statistics
from decimal import Decimal

from marketflow.sim.market import ROW_PRICE, Market, TradeTape
from marketflow.sim.walk import AssetWalk, asset_of, basis_ppm

# (exchange, category, native symbol, trades per frame) of BTC on four venues' markets.
BTC = (
    ("bybit", "spot", "BTCUSDT", (1, 5)),
    ("bybit", "linear", "BTCUSDT", (1, 3)),
    ("binance", "usdm", "BTCUSDT", (1, 4)),
    ("okx", "swap", "BTC-USD-SWAP", (1, 1)),
    ("coinbase", "spot", "BTC-USD", (1, 3)),
    ("kraken", "spot", "BTC/USD", (1, 3)),
)
CHUNKS = 60
FRAMES = 500  # per chunk: 30,000 frames, a bit over half of the slowest octave's period


def closes(market: Market, frames_per_cut: int) -> dict[str, list[Decimal]]:
    """Each venue's last price after every chunk of frames."""
    out: dict[str, list[Decimal]] = {}
    tapes = [(market.tape(category, symbol, exchange), tpf) for exchange, category, symbol, tpf in BTC]
    for tape, tpf in tapes:
        series = out.setdefault(f"{tape.exchange}/{tape.category}", [])
        for _ in range(CHUNKS):
            rows = []
            for _ in range(FRAMES // frames_per_cut):
                rows += [r for f in market.cut_frames(tape, frames_per_cut, tpf) for r in f.trades]
            series.append(Decimal(rows[-1][ROW_PRICE]))
    return out


def correlation(a: list[Decimal], b: list[Decimal]) -> float:
    da = [float(y - x) for x, y in zip(a, a[1:], strict=False)]
    db = [float(y - x) for x, y in zip(b, b[1:], strict=False)]
    return statistics.correlation(da, db)


def test_venues_move_together_around_one_path() -> None:
    series = closes(Market(seed=11), 50)
    venues = list(series)
    moves = [max(s) - min(s) for s in series.values()]
    spreads = [max(s[i] for s in series.values()) - min(s[i] for s in series.values()) for i in range(CHUNKS)]
    # The asset moves (more than the venues ever differ), and every pair of venues moves with it.
    assert min(moves) > 2 * max(spreads)
    for i, a in enumerate(venues):
        for b in venues[i + 1 :]:
            assert correlation(series[a], series[b]) > 0.8, (a, b)
    # Each venue's price stays within half a percent of the others (basis ≤ 0.04 %, noise ≤ 0.2 %).
    assert max(spreads) / series[venues[0]][0] < Decimal("0.005")


def test_the_walk_is_deterministic_by_seed_however_tapes_are_cut() -> None:
    assert closes(Market(seed=11), 50) == closes(Market(seed=11), 10)
    assert closes(Market(seed=11), 50) != closes(Market(seed=12), 50)
    walk, twin = AssetWalk(3, "BTC"), AssetWalk(3, "BTC")
    forward = [walk.ppm(step) for step in range(0, 100_000, 37)]
    assert forward == [twin.ppm(step) for step in reversed(range(0, 100_000, 37))][::-1]
    assert max(forward) - min(forward) > 2_000  # ppm: the path really moves


def test_a_tape_without_a_walk_is_as_before() -> None:
    """Tapes made directly (no Market) walk alone; `Market.tape` attaches the asset's shared walk."""
    market = Market(seed=4)
    assert market.tape("spot", "BTCUSDT").walk is market.tape("usdm", "BTCUSDT", "binance").walk
    assert market.tape("spot", "ETHUSDT").walk is not market.tape("spot", "BTCUSDT").walk
    tape = TradeTape(4, "spot", market.tape("spot", "BTCUSDT").instrument)
    assert tape.walk is None


def test_assets_and_bases() -> None:
    assert [asset_of(s) for s in ("BTCUSDT", "btcusdt", "BTC-USD-SWAP", "BTC/USD", "ETHUSDC", "SOL")] == [
        "BTC",
        "BTC",
        "BTC",
        "BTC",
        "ETH",
        "SOL",
    ]
    assert -50 <= basis_ppm("bybit", "spot", "BTCUSDT") < 50
    assert -100 <= basis_ppm("okx", "swap", "BTC-USD-SWAP") < 400
