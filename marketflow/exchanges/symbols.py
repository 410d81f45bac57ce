"""Symbol rules shared by venues that write symbols compactly (`BTCUSDT` for `BTC-USDT` / `BTC-USDT-PERP`)."""

from __future__ import annotations

import re

from marketflow.model import SymbolError, native_symbol, normalize_symbol

_COMPACT = re.compile(r"[A-Z0-9]+-[A-Z0-9]+(-PERP)?")


def normalize_compact(symbol: str, *, perpetual: bool) -> str:
    """`BTCUSDT`, `btc-usdt`, `BTC-USDT-PERP` → normalized; SymbolError names what is wrong."""
    normalized = normalize_symbol(symbol, perpetual=perpetual)
    if not _COMPACT.fullmatch(normalized):
        raise SymbolError(f"{symbol!r} holds characters other than letters and digits")
    return normalized


def compact_native(normalized: str) -> str:
    """`BTC-USDT` / `BTC-USDT-PERP` → `BTCUSDT`."""
    return native_symbol(normalized)
