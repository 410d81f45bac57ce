"""The venues (one package each, behind the `Venue` contract of `base.py`) and the WebSocket transport.

`VENUES` is the registry the rest of marketflow asks: config checks `[[feeds]] exchange` against it, the
daemon builds connections, decoders and books from it. Adding a venue adds one entry here.
"""

from __future__ import annotations

from marketflow.exchanges import binance, bybit, coinbase, kraken, okx
from marketflow.exchanges.base import Venue

VENUES: dict[str, Venue] = {
    v.name: v for v in (bybit.VENUE, binance.VENUE, okx.VENUE, coinbase.VENUE, kraken.VENUE)
}


def venue(exchange: str) -> Venue:
    """The venue of an exchange name; `KeyError` names the known ones."""
    try:
        return VENUES[exchange]
    except KeyError:
        raise KeyError(f"unknown exchange {exchange!r}; known: {sorted(VENUES)}") from None


def normalize_symbol(exchange: str, market: str, symbol: str) -> str:
    """A symbol as a user wrote it → normalized, by the venue's rule (`model.SymbolError` if not)."""
    return venue(exchange).normalize_symbol(market, symbol)


def native_symbol(exchange: str, market: str, symbol: str) -> str:
    """A normalized symbol → the venue's own spelling."""
    return venue(exchange).native_symbol(market, symbol)


def market_names() -> tuple[str, ...]:
    """Every market name some venue has, in registry order (`spot`, `linear`, `usdm`, ...)."""
    return tuple(dict.fromkeys(m for v in VENUES.values() for m in v.markets))


def markets_text() -> str:
    """`"spot", "linear" (bybit) or "usdm" (binance)`: every market, with its venues unless all have it."""
    parts = []
    for market in market_names():
        having = [name for name, v in VENUES.items() if market in v.markets]
        parts.append(f'"{market}"' + ("" if len(having) == len(VENUES) else f" ({', '.join(having)})"))
    return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]


def example_feed_name() -> str:
    """A feed name as config derives it (`exchange-market`) for the first registered venue market."""
    first = next(iter(VENUES.values()))
    return f"{first.name}-{next(iter(first.markets))}"
