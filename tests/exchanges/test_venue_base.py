"""The plumbing the venue packages share (`marketflow/exchanges/venue_base.py`), checked over every venue in
`VENUES`: what a caller sees (error texts, log records, counters) is the same for each, in each one's name."""

from __future__ import annotations

import logging

import pytest

from marketflow.exchanges import VENUES
from marketflow.exchanges.base import BookRecovery, Decoded

NAMES = sorted(VENUES)
RESUBSCRIBING = [
    n
    for n in NAMES
    if VENUES[n].book_recovery(next(iter(VENUES[n].markets))) is BookRecovery.RESUBSCRIBE
    and n != "okx"  # also aligns a stream sent without a WebSocket snapshot with a REST one (test_okx.py)
]


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_market_is_named_with_the_known_ones(name: str) -> None:
    venue = VENUES[name]
    known = sorted(venue.markets)
    with pytest.raises(ValueError) as caught:
        venue.trade_recovery("nope")
    assert str(caught.value) == f"{name} has no market 'nope'; expected one of {known}"


@pytest.mark.parametrize("name", NAMES)
def test_a_malformed_frame_is_counted_and_logged_on_the_venues_logger(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    venue = VENUES[name]
    market = next(iter(venue.markets))
    decoder = venue.decoder(market, {})
    with caplog.at_level(logging.WARNING):
        decoder.decode([b"{"], 1, Decoded())
    assert decoder.counters.malformed == 1
    assert decoder.counters.last_error is not None
    [record] = [r for r in caplog.records if r.getMessage().startswith("malformed")]
    assert record.name == f"marketflow.exchanges.{name}"
    assert record.getMessage() == f"malformed {name} frame ignored"
    assert record.__dict__["market"] == market
    assert record.__dict__["frame"] == b"{"
    assert record.__dict__["error"] == decoder.counters.last_error


@pytest.mark.parametrize("name", RESUBSCRIBING)
def test_a_resubscribing_venue_has_no_rest_snapshot(name: str) -> None:
    venue = VENUES[name]
    market = next(iter(venue.markets))
    with pytest.raises(NotImplementedError, match=rf"^{name} books are re-snapshotted by resubscribing"):
        venue.snapshot_request(market, "X")
    with pytest.raises(NotImplementedError, match=rf"^{name} books are re-snapshotted by resubscribing"):
        venue.parse_snapshot(market, b"", "X", 0)
