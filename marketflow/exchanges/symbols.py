"""Symbol rules shared by venues: the ASCII check every venue's symbol parser runs first, and the compact
form (`BTCUSDT` for `BTC-USDT` / `BTC-USDT-PERP`) some venues write."""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from marketflow.model import SymbolError, native_symbol, normalize_symbol

_COMPACT = re.compile(r"[A-Z0-9]+-[A-Z0-9]+(-PERP)?")
# How much of a refused symbol an error repeats (a query parameter can be kilobytes long).
_SHOWN: Final = 40


def non_ascii_character(text: str) -> str | None:
    """`U+0412 (CYRILLIC CAPITAL LETTER VE)`: the first non-ASCII character of `text`, or None."""
    if text.isascii():
        return None
    char = next(c for c in text if not c.isascii())
    return f"U+{ord(char):04X} ({unicodedata.name(char, 'unnamed')})"


def check_ascii_symbol(symbol: str) -> None:
    """Raise `SymbolError` naming the first non-ASCII character of `symbol`, if it has one.

    Every venue's symbol parser runs this before it strips or upper-cases anything: a look-alike
    (a Cyrillic `В`, a fullwidth `Ｔ`) passes `str.isalnum`, and `str.upper` and `str.strip` turn some
    characters into ASCII or nothing (a long `ſ` into `S`, a dotless `ı` into `I`, a no-break space away),
    so `BTC-UſDT` would otherwise name BTC-USDT."""
    char = non_ascii_character(symbol)
    if char is not None:
        shown = symbol if len(symbol) <= _SHOWN else symbol[:_SHOWN] + "..."
        raise SymbolError(
            f"{shown!r} holds the non-ASCII character {char}; symbols are ASCII letters and digits"
        )


def normalize_compact(symbol: str, *, perpetual: bool) -> str:
    """`BTCUSDT`, `btc-usdt`, `BTC-USDT-PERP` → normalized; SymbolError names what is wrong."""
    check_ascii_symbol(symbol)
    normalized = normalize_symbol(symbol, perpetual=perpetual)
    if not _COMPACT.fullmatch(normalized):
        raise SymbolError(f"{symbol!r} holds characters other than letters and digits")
    return normalized


def compact_native(normalized: str) -> str:
    """`BTC-USDT` / `BTC-USDT-PERP` → `BTCUSDT`."""
    check_ascii_symbol(normalized)
    return native_symbol(normalized)
