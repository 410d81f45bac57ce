"""Every venue module exports the same names (see marketflow/exchanges/base.py)."""

from __future__ import annotations

import pytest

from marketflow.exchanges import VENUES, venue

REQUIRED = ("EXCHANGE", "MARKETS", "ws_url", "rest_url", "connections", "Session", "FrameDecoder")


@pytest.mark.parametrize("name", sorted(VENUES))
def test_venue_exports_the_common_names(name: str) -> None:
    module = VENUES[name]
    missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
    assert missing == []
    assert name == module.EXCHANGE
    for market in module.MARKETS:
        assert module.ws_url(market).startswith("wss://")
        assert module.rest_url(market).startswith("https://")
        plans = module.connections(market, ["BTCUSDT", "ETHUSDT"], ("trades", "book"), 50, None)
        assert {n for p in plans for n in p.natives} == {"BTCUSDT", "ETHUSDT"}
        assert {c for p in plans for c in p.channels} == {"trades", "book"}
        for plan in plans:
            session = module.Session(market, plan.topics)
            assert session.subscribe_requests()
            assert session.send_interval_s >= 0
        assert hasattr(module.FrameDecoder(name, market, {}), "counters")


def test_unknown_venue_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown exchange 'kraken'; known: \\['binance', 'bybit'"):
        venue("kraken")
