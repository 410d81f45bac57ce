"""One shared price path per asset for the simulator's tapes, so its venues quote a coherent market.

Every tape of an asset (BTC on each venue's spot, perpetual and inverse markets) shows the asset's
:class:`AssetWalk` plus its venue's fixed basis (:func:`basis_ppm`) plus its own small walk (venue noise,
within :data:`LOCAL_BAND`). The path is a function of the walk step alone — a tape's trades taken divided by
its feed's mean trades per frame — so a tape stays the same for a seed however it is cut and whatever the
rate, and venues cutting frames at one rate walk in step.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Final

__all__ = ["LOCAL_BAND", "WALK_OCTAVES", "AssetWalk", "asset_of", "basis_ppm"]

# The shared path of an asset: (period in walk steps, amplitude in parts per million) per octave. A walk step
# is one frame's worth of a tape's trades, so at the same frame rate every venue walks in step.
WALK_OCTAVES: Final = ((250.0, 400.0), (1_500.0, 1_200.0), (9_000.0, 3_000.0), (54_000.0, 6_000.0))
LOCAL_BAND: Final = 0.002
"""With a shared walk, a tape's own walk (venue noise) stays within about this fraction of its start."""
_QUOTES: Final = ("USDT", "USDC", "USD")


def asset_of(native: str) -> str:
    """The base asset of a native symbol (`BTCUSDT`, `btcusdt`, `BTC-USD-SWAP`, `BTC/USD` → `BTC`)."""
    text = native.upper().replace("/", "-")
    if "-" in text:
        return text.split("-")[0]
    for quote in _QUOTES:
        if text.endswith(quote) and len(text) > len(quote):
            return text[: -len(quote)]
    return text


class AssetWalk:
    """One asset's price path shared by every venue's tapes, in parts per million of the start price.

    Value noise: per octave, pseudo-random knots (from the seed, the asset, the octave and the knot's
    index, through BLAKE2b) joined by straight lines, summed. A function of the step alone, so the path
    does not depend on how tapes are cut, on the rate, or on which venue asks first.
    """

    def __init__(self, seed: int, asset: str) -> None:
        self._key = f"{seed}:{asset}:"
        self._knots: list[tuple[int, float, float]] = [(-1, 0.0, 0.0) for _ in WALK_OCTAVES]

    def _knot(self, octave: int, index: int) -> float:
        digest = hashlib.blake2b(f"{self._key}{octave}:{index}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**63 - 1.0

    def ppm(self, step: int) -> float:
        """The path at `step` (walk steps since the start), in ppm of the start price."""
        total = 0.0
        knots = self._knots
        for octave, (period, amplitude) in enumerate(WALK_OCTAVES):
            where = step / period
            index = int(where)
            known = knots[octave]
            if known[0] != index:
                known = knots[octave] = (index, self._knot(octave, index), self._knot(octave, index + 1))
            _, left, right = known
            total += amplitude * (left + (right - left) * (where - index))
        return total


def basis_ppm(exchange: str, category: str, symbol: str) -> int:
    """A venue's fixed premium over the shared path: derivatives −100..+399 ppm, spot −50..+49 ppm."""
    crc = zlib.crc32(f"{exchange}:{category}:{symbol}".encode())
    return crc % 100 - 50 if category == "spot" else crc % 500 - 100
