"""Kraken symbols (PROTOCOLS.md §10.5): v2 natives `BTC/USD`, normalized `BTC-USD`.

Kraken's own history shows in its names: v1 and REST `wsname` write `XBT/USD`, REST altnames `XBTUSD`, and
REST pair keys `XXBTZUSD` carry legacy X/Z asset prefixes. Every form is accepted on input; `XBT` and `XDG`
become `BTC` and `DOGE` wherever they stand (base or quote). Legacy prefixes come from an explicit table:
a prefix rule would break real assets that begin with X or Z (XTZ, XRP, ZRX, ZEC).
"""

from __future__ import annotations

import re

from marketflow.exchanges.symbols import check_ascii_symbol
from marketflow.model import SymbolError

EXCHANGE = "kraken"
SPOT = "spot"

ALIASES = {"XBT": "BTC", "XDG": "DOGE"}
"""Kraken's legacy asset codes → the names v2 and marketflow use."""
REST_ALIASES = {"BTC": "XBT", "DOGE": "XDG"}
"""The other way, for REST `pair=` parameters (altnames such as `XBTUSD`)."""
LEGACY_ASSETS = {
    "XXBT": "BTC",
    "XXDG": "DOGE",
    "XETH": "ETH",
    "XETC": "ETC",
    "XLTC": "LTC",
    "XXRP": "XRP",
    "XXLM": "XLM",
    "XXMR": "XMR",
    "XZEC": "ZEC",
    "XREP": "REP",
    "XMLN": "MLN",
    "ZUSD": "USD",
    "ZEUR": "EUR",
    "ZGBP": "GBP",
    "ZJPY": "JPY",
    "ZCAD": "CAD",
    "ZAUD": "AUD",
}
"""REST asset codes with a legacy X/Z prefix (pair keys such as `XXBTZUSD` are two of them)."""
# Quote assets tried, longest first, to split a compact altname (`XBTUSD`, `ETHXBT`, `BTCUSDT`).
QUOTES = (
    "USDT",
    "USDC",
    "PYUSD",
    "USD",
    "EUR",
    "GBP",
    "JPY",
    "CAD",
    "AUD",
    "CHF",
    "XBT",
    "BTC",
    "ETH",
    "DAI",
)
_ASSET = re.compile(r"[A-Z0-9]{1,16}")


def _asset(code: str, symbol: str) -> str:
    if not _ASSET.fullmatch(code):
        raise SymbolError(f"{symbol!r}: {code!r} is not an asset code (ASCII letters and digits)")
    return ALIASES.get(code, code)


def _split_compact(text: str, symbol: str) -> tuple[str, str]:
    if len(text) == 8 and text[:4] in LEGACY_ASSETS and text[4:] in LEGACY_ASSETS:
        return LEGACY_ASSETS[text[:4]], LEGACY_ASSETS[text[4:]]
    for quote in sorted(QUOTES, key=len, reverse=True):
        if text.endswith(quote) and len(text) > len(quote):
            base = text[: -len(quote)]
            return LEGACY_ASSETS.get(base, base), quote
    raise SymbolError(f"cannot tell base and quote apart in {symbol!r}; write it as BTC/USD or BTC-USD")


def split(symbol: str) -> tuple[str, str]:
    """(base, quote) of any accepted spelling, with `BTC`/`DOGE` for `XBT`/`XDG`."""
    check_ascii_symbol(symbol)
    text = symbol.strip().upper()
    if not text:
        raise SymbolError("empty symbol")
    for sep in ("/", "-"):
        if sep in text:
            parts = text.split(sep)
            if len(parts) != 2 or not parts[0] or not parts[1]:
                raise SymbolError(f"{symbol!r} is not a spot pair like BTC/USD or BTC-USD")
            return _asset(parts[0], symbol), _asset(parts[1], symbol)
    base, quote = _split_compact(text, symbol)
    return _asset(base, symbol), _asset(quote, symbol)


def to_normalized(symbol: str) -> str:
    """`BTC/USD`, `XBT/USD`, `xbtusd`, `XXBTZUSD`, `BTC-USD` → `BTC-USD`."""
    base, quote = split(symbol)
    return f"{base}-{quote}"


def to_native(symbol: str) -> str:
    """`BTC-USD` (or any accepted spelling) → the v2 native `BTC/USD`."""
    base, quote = split(symbol)
    return f"{base}/{quote}"


def rest_pair(native: str) -> str:
    """The REST `pair=` parameter of a v2 native: its altname (`BTC/USD` → `XBTUSD`)."""
    base, quote = split(native)
    return REST_ALIASES.get(base, base) + REST_ALIASES.get(quote, quote)
