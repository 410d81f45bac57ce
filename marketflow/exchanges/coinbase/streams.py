"""Coinbase Advanced Trade public stream: its market, URLs, topics and connection plan (PROTOCOLS.md §9)."""

from __future__ import annotations

from collections.abc import Sequence

from marketflow.exchanges.base import ConnectionPlan

EXCHANGE = "coinbase"
MARKET = "spot"
DEFAULT_WS = "wss://advanced-trade-ws.coinbase.com"
DEFAULT_REST = "https://api.coinbase.com"
TRADES_CHANNEL = "market_trades"
BOOK_CHANNEL = "level2"
HEARTBEATS_CHANNEL = "heartbeats"
TICKER_CHANNEL = "ticker"
TRADES_PREFIX = TRADES_CHANNEL + ":"
BOOK_PREFIX = BOOK_CHANNEL + ":"
TICKER_PREFIX = TICKER_CHANNEL + ":"


def check_market(market: str) -> None:
    if market != MARKET:
        raise ValueError(f"coinbase has no market {market!r}; expected one of ['{MARKET}']")


def ws_url(market: str, override: str | None = None) -> str:
    check_market(market)
    return override or DEFAULT_WS


def rest_url(market: str, override: str | None = None) -> str:
    check_market(market)
    return (override or DEFAULT_REST).rstrip("/")


def trade_topic(native: str) -> str:
    return TRADES_PREFIX + native


def book_topic(native: str) -> str:
    return BOOK_PREFIX + native


def ticker_topic(native: str) -> str:
    return TICKER_PREFIX + native


def connections(
    market: str, natives: Sequence[str], channels: Sequence[str], ws_override: str | None = None
) -> list[ConnectionPlan]:
    """One connection per feed: its `level2`, `market_trades` and `ticker` topics (heartbeats are always
    added)."""
    topics = [book_topic(n) for n in natives] if "book" in channels else []
    if "trades" in channels:
        topics += [trade_topic(n) for n in natives]
    if "ticker" in channels:
        topics += [ticker_topic(n) for n in natives]
    return [
        ConnectionPlan("", ws_url(market, ws_override), tuple(topics), frozenset(channels), tuple(natives))
    ]
