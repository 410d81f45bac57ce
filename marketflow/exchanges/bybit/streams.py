"""Bybit v5 public streams: the markets, their URLs, topics and the connection plan (PROTOCOLS.md §1)."""

from __future__ import annotations

from collections.abc import Sequence

from marketflow.exchanges.base import ConnectionPlan

EXCHANGE = "bybit"
MARKET_NAMES = ("spot", "linear")
DEFAULT_WS = {
    "spot": "wss://stream.bybit.com/v5/public/spot",
    "linear": "wss://stream.bybit.com/v5/public/linear",
}
DEFAULT_REST = "https://api.bybit.com"
_TRADE_PREFIX = "publicTrade."
_BOOK_PREFIX = "orderbook."
TICKER_PREFIX = "tickers."
LIQUIDATION_PREFIX = "allLiquidation."


def ws_url(market: str, override: str | None = None) -> str:
    """The stream URL of a market: the override as given (it is the full URL), else mainnet's."""
    if market not in MARKET_NAMES:
        raise ValueError(f"bybit has no market {market!r}; expected one of {sorted(MARKET_NAMES)}")
    return override or DEFAULT_WS[market]


def rest_url(market: str, override: str | None = None) -> str:
    if market not in MARKET_NAMES:
        raise ValueError(f"bybit has no market {market!r}; expected one of {sorted(MARKET_NAMES)}")
    return (override or DEFAULT_REST).rstrip("/")


def trade_topic(native: str) -> str:
    return _TRADE_PREFIX + native


def book_topic(native: str, depth: int) -> str:
    return f"{_BOOK_PREFIX}{depth}.{native}"


def ticker_topic(native: str) -> str:
    """`tickers.{symbol}`: the `ticker` channel, and on linear the `derivatives` channel too (§1.7)."""
    return TICKER_PREFIX + native


def liquidation_topic(native: str) -> str:
    return LIQUIDATION_PREFIX + native


def connections(
    market: str,
    natives: Sequence[str],
    channels: Sequence[str],
    book_depth: int,
    ws_override: str | None = None,
) -> list[ConnectionPlan]:
    """One connection per feed: every topic of the market on its stream URL."""
    topics = [trade_topic(n) for n in natives] if "trades" in channels else []
    if "book" in channels:
        topics += [book_topic(n, book_depth) for n in natives]
    if "ticker" in channels or "derivatives" in channels:
        topics += [ticker_topic(n) for n in natives]
    if "liquidations" in channels:
        topics += [liquidation_topic(n) for n in natives]
    return [
        ConnectionPlan("", ws_url(market, ws_override), tuple(topics), frozenset(channels), tuple(natives))
    ]
