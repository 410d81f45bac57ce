"""OKX v5 markets and instrument names, both ways (SPEC §11, PROTOCOLS.md §8.5).

| market    | native (`instId`)                         | normalized          |
|-----------|-------------------------------------------|---------------------|
| `spot`    | `BTC-USDT`                                | `BTC-USDT`          |
| `swap`    | `BTC-USDT-SWAP` (linear), `BTC-USD-SWAP`  | `BTC-USDT-PERP`, `BTC-USD-PERP` |
| `futures` | `BTC-USD-250627` (yyMMdd)                 | `BTC-USD-20250627`  |

Both forms are accepted as input (`BTCUSDT` too, on spot, when its quote asset is known).
"""

from __future__ import annotations

from marketflow.exchanges.symbols import check_ascii_symbol
from marketflow.model import SymbolError, split_native

EXCHANGE = "okx"
SPOT = "spot"
SWAP = "swap"
FUTURES = "futures"
MARKETS: dict[str, bool] = {SPOT: False, SWAP: True, FUTURES: False}
"""Market name → is it a perpetual market."""
INST_TYPES: dict[str, str] = {SPOT: "SPOT", SWAP: "SWAP", FUTURES: "FUTURES"}
"""Market name → the `instType` of OKX's REST and WebSocket arguments."""


def _check_market(market: str) -> None:
    if market not in MARKETS:
        raise SymbolError(f"okx has no market {market!r}; expected one of {sorted(MARKETS)}")


def _pair(parts: list[str], symbol: str) -> tuple[str, str]:
    base, quote = parts[0], parts[1]
    if not base.isalnum() or not quote.isalnum():
        raise SymbolError(f"{symbol!r}: base and quote must be letters and digits")
    return base, quote


def to_native(market: str, symbol: str) -> str:
    """Any accepted form of `symbol` on `market` → OKX's `instId` (`BTC-USDT-PERP` → `BTC-USDT-SWAP`)."""
    _check_market(market)
    check_ascii_symbol(symbol)
    text = symbol.strip().upper()
    if not text:
        raise SymbolError("empty symbol")
    parts = text.split("-") if "-" in text else list(split_native(text))
    if market == SPOT:
        if len(parts) != 2:
            raise SymbolError(f"{symbol!r} is not an okx spot symbol like BTC-USDT")
        base, quote = _pair(parts, symbol)
        return f"{base}-{quote}"
    if market == SWAP:
        if len(parts) == 3 and parts[2] in ("SWAP", "PERP"):
            parts = parts[:2]
        if len(parts) != 2:
            raise SymbolError(f"{symbol!r} is not an okx swap symbol like BTC-USDT-SWAP or BTC-USD-PERP")
        base, quote = _pair(parts, symbol)
        return f"{base}-{quote}-SWAP"
    if len(parts) != 3:
        raise SymbolError(f"{symbol!r} is not an okx futures symbol like BTC-USD-250627 or BTC-USD-20250627")
    base, quote = _pair(parts, symbol)
    expiry = parts[2]
    if len(expiry) == 8 and expiry.isdigit() and expiry.startswith("20"):
        expiry = expiry[2:]
    if len(expiry) != 6 or not expiry.isdigit():
        raise SymbolError(f"{symbol!r}: the expiry must be yyMMdd or yyyyMMdd digits")
    return f"{base}-{quote}-{expiry}"


def to_normalized(market: str, native: str) -> str:
    """OKX's `instId` → the normalized symbol (`BTC-USD-SWAP` → `BTC-USD-PERP`)."""
    inst = to_native(market, native)
    if market == SWAP:
        return inst[: -len("SWAP")] + "PERP"
    if market == FUTURES:
        head, _, expiry = inst.rpartition("-")
        return f"{head}-20{expiry}"
    return inst


def normalize(market: str, symbol: str) -> tuple[str, str]:
    """(native, normalized) of any accepted form of `symbol`."""
    native = to_native(market, symbol)
    return native, to_normalized(market, native)
