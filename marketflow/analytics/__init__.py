"""Order-flow analytics with results defined exactly (SPEC §8): candles, volume profiles, order flow and
footprints, book statistics; live in :class:`AnalyticsEngine`, and as pure functions over any trade list.

Decimal rules (``decimal_fmt.py``): sums and products exact; ratios (vwap, imbalance, microprice, depth
imbalance, divergence) divided to 28 significant digits, half-even; JSON decimals are plain-notation strings.
"""

from .bars import Bar, PackedBar, build_bars, default_bin, floor_time, parse_interval
from .book_stats import (
    BookStats,
    book_stats,
    book_stats_json,
    depth_imbalance,
    microprice,
    mid,
    mid_divergence_bps,
    spread,
)
from .candles import Candle, candle_from_bar, candle_json, compute_candles_from_trades
from .decimal_fmt import dec, ratio
from .engine import AnalyticsEngine, AnalyticsStatistics, NotLiveError
from .order_flow import Footprint, compute_order_flow_from_trades, footprint, order_flow_json
from .volume_profile import VolumeProfile, compute_volume_profile_from_trades, profile_json, volume_profile

__all__ = [
    "AnalyticsEngine",
    "AnalyticsStatistics",
    "Bar",
    "PackedBar",
    "BookStats",
    "Candle",
    "Footprint",
    "NotLiveError",
    "VolumeProfile",
    "book_stats",
    "book_stats_json",
    "build_bars",
    "candle_from_bar",
    "candle_json",
    "compute_candles_from_trades",
    "compute_order_flow_from_trades",
    "compute_volume_profile_from_trades",
    "dec",
    "default_bin",
    "depth_imbalance",
    "floor_time",
    "footprint",
    "microprice",
    "mid",
    "mid_divergence_bps",
    "order_flow_json",
    "parse_interval",
    "profile_json",
    "ratio",
    "spread",
    "volume_profile",
]
