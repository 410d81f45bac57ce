"""Every venue module exports the same names (see marketflow/exchanges/base.py)."""

from __future__ import annotations

import pytest

from marketflow.exchanges import VENUES, venue

REQUIRED = ("EXCHANGE", "MARKETS", "ws_url", "Session", "FrameDecoder")


@pytest.mark.parametrize("name", sorted(VENUES))
def test_venue_exports_the_common_names(name: str) -> None:
    module = VENUES[name]
    missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
    assert missing == []
    assert name == module.EXCHANGE
    for market in module.MARKETS:
        assert module.ws_url(market).startswith("wss://")
        session = module.Session(market, ["BTCUSDT"], ("trades",))
        assert session.subscribe_requests()
        assert hasattr(module.FrameDecoder(name, market, {}), "counters")


def test_unknown_venue_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown exchange 'kraken'; known: \\['bybit'"):
        venue("kraken")
