"""The simulator's instruments: how each (exchange, category, symbol) tape prices and sizes its trades.

`instrument_for` gives a tape its starting price, tick and size grid in the venue's own shape (Binance spot
pads sizes to 8 decimals, Kraken's BTC pairs tick in tenths, ...); `Formats` turns ticks and steps into the
exact strings, cached. `stable_crc` is the process-independent hash the simulator derives names' numbers from.
"""

from __future__ import annotations

import zlib

import attrs

# Strings cached per Formats and kind (~120 B each): a book's prices drift (13k distinct in 25k updates) and
# wide size distributions have tens of thousands of values, so the caches need a bound.
FORMAT_CACHE_LIMIT = 512

IDS_NUMERIC = "numeric"  # Bybit spot: increasing numeric strings with gaps
IDS_UUID = "uuid"  # Bybit derivatives
IDS_BINANCE = "binance"  # contiguous aggregate ids, each covering 1+ contiguous trade ids


@attrs.frozen
class Instrument:
    """How one tape prices and sizes its trades.

    A price is `ticks * 10**-tick_decimals`, shown with `price_decimals`; a size is
    `steps * 10**-size_decimals`, shown with `size_pad` extra zeros (Binance spot's "0.00062000").
    """

    symbol: str
    start_ticks: int
    tick_decimals: int
    price_decimals: int
    size_decimals: int
    mean_size_steps: float
    ids: str
    size_pad: int = 0


def stable_crc(text: str) -> int:
    """A process-independent 32-bit hash (CRC-32) of `text`."""
    return zlib.crc32(text.encode())


def instrument_for(category: str, symbol: str, exchange: str = "bybit") -> Instrument:
    """The instrument spec of `symbol` on `exchange`'s `category` (Bybit spot/linear/…, Binance spot/usdm)."""
    spot = category == "spot"
    if exchange == "coinbase":  # products BTC-USD: "65000.01" / "0.00012345"; contiguous trade ids
        if symbol.startswith("BTC-"):
            return Instrument(symbol, 6_500_000, 2, 2, 8, 50_000.0, IDS_BINANCE)
        if symbol.startswith("ETH-"):
            return Instrument(symbol, 300_000, 2, 2, 8, 500_000.0, IDS_BINANCE)
        start = (1 + stable_crc(symbol) % 500) * 10_000
        return Instrument(symbol, start, 4, 4, 2, 100.0, IDS_BINANCE)
    if exchange == "kraken":  # v2 pairs BTC/USD: price_precision = tick decimals, qty_precision 8
        # "65000.20" on the wire at precision 1, "0.00100000"; BTC at 65000 as on the other venues (one
        # shared walk per asset, sim/walk.py)
        if symbol.startswith("BTC/"):
            return Instrument(symbol, 650_000, 1, 2, 8, 50_000.0, IDS_BINANCE)
        if symbol.startswith("ETH/"):
            return Instrument(symbol, 300_000, 2, 2, 8, 500_000.0, IDS_BINANCE)
        start = (1 + stable_crc(symbol.split("/")[0]) % 500) * 10_000
        return Instrument(symbol, start, 2, 2, 8, 500_000.0, IDS_BINANCE)
    if exchange == "okx":  # instIds: BTC-USDT, BTC-USDT-SWAP, BTC-USD-SWAP, BTC-USD-270625
        inverse = symbol.split("-")[1] == "USD"
        if symbol.startswith("BTC-"):  # "65114.2"; spot "0.00012345" BTC, swaps in contracts
            if spot:
                return Instrument(symbol, 650_000, 1, 1, 8, 50_000.0, IDS_BINANCE)
            return Instrument(
                symbol, 650_000, 1, 1, 1 if inverse else 2, 30.0 if inverse else 300.0, IDS_BINANCE
            )
        # ETH at 3000.00 as on the other venues (one shared walk per asset); others from the name.
        start = (
            300_000 if symbol.startswith("ETH-") else (1 + stable_crc(symbol.split("-")[0]) % 500) * 10_000
        )
        return Instrument(symbol, start, 2, 2, 4 if spot else 1, 500.0 if spot else 30.0, IDS_BINANCE)
    if exchange == "binance":
        if symbol.startswith("BTC"):  # spot "97674.73000000" / "0.00062000"; usdm "68005.00" / "2.695"
            if spot:
                return Instrument(symbol, 6_500_000, 2, 8, 5, 2_000.0, IDS_BINANCE, 3)
            return Instrument(symbol, 650_000, 1, 2, 3, 50.0, IDS_BINANCE)
        if symbol.startswith("ETH"):
            if spot:
                return Instrument(symbol, 300_000, 2, 8, 4, 5_000.0, IDS_BINANCE, 4)
            return Instrument(symbol, 300_000, 2, 2, 3, 500.0, IDS_BINANCE)
        start = (1 + stable_crc(symbol) % 500) * 10_000
        return Instrument(symbol, start, 4, 8 if spot else 4, 1, 100.0, IDS_BINANCE, 7 if spot else 0)
    if symbol.startswith("BTC"):
        if spot:  # "80413.3", "0.004904"
            return Instrument(symbol, 650_000, 1, 1, 6, 5_000.0, IDS_NUMERIC)
        return Instrument(symbol, 650_000, 1, 2, 3, 20.0, IDS_UUID)  # "65114.20", "0.020"
    if symbol.startswith("ETH"):
        if spot:
            return Instrument(symbol, 300_000, 2, 2, 5, 20_000.0, IDS_NUMERIC)
        return Instrument(symbol, 300_000, 2, 2, 2, 30.0, IDS_UUID)
    # Anything else: a price between 1 and 500 from the name, 4 decimals.
    start = (1 + stable_crc(symbol) % 500) * 10_000
    return Instrument(symbol, start, 4, 4, 1, 100.0, IDS_NUMERIC if spot else IDS_UUID)


class Formats:
    """Exact price and size strings of one instrument, cached (a random walk revisits values a lot).

    Each cache is emptied when it reaches `FORMAT_CACHE_LIMIT` entries, in place (callers hold the dicts),
    so a walk that wanders for days does not grow it for ever.
    """

    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        self.prices: dict[int, str] = {}
        self.sizes: dict[int, str] = {}
        self._price_scale = 10 ** (instrument.price_decimals - instrument.tick_decimals)
        self._size_decimals = instrument.size_decimals + instrument.size_pad
        self._size_scale: int = 10**instrument.size_pad
        self.zero_size = self.size(0)

    def price(self, ticks: int) -> str:
        decimals = self.instrument.price_decimals
        whole, frac = divmod(ticks * self._price_scale, 10**decimals)
        text = "%d.%0*d" % (whole, decimals, frac)  # noqa: UP031
        prices = self.prices
        if len(prices) >= FORMAT_CACHE_LIMIT:
            prices.clear()
        prices[ticks] = text
        return text

    def size(self, steps: int) -> str:
        decimals = self._size_decimals
        whole, frac = divmod(steps * self._size_scale, 10**decimals)
        text = "%d.%0*d" % (whole, decimals, frac)  # noqa: UP031
        sizes = self.sizes
        if len(sizes) >= FORMAT_CACHE_LIMIT:
            sizes.clear()
        sizes[steps] = text
        return text

    def size_steps(self, text: str) -> int:
        """Inverse of `size`."""
        return int(text.replace(".", "")) // self._size_scale


__all__ = [
    "FORMAT_CACHE_LIMIT",
    "IDS_BINANCE",
    "IDS_NUMERIC",
    "IDS_UUID",
    "Formats",
    "Instrument",
    "instrument_for",
    "stable_crc",
]
