"""The per-venue decode benchmark runs over every venue the simulator speaks (figures are not asserted)."""

from __future__ import annotations

from benchmarks import decode
from marketflow.exchanges import VENUES


def test_every_venue_gets_a_decode_row(capsys: object) -> None:
    rows = decode.run(200, 1)
    assert [r["venue"] for r in rows] == list(VENUES)
    for row in rows:
        assert row["trade_frames"] == row["book_frames"] == 200
        assert row["trades_per_frame"] >= 1 and row["book_bytes_per_frame"] > 0
        assert row["trade_decode_us_per_frame"] > 0 and row["book_decode_us_per_frame"] > 0
    okx = next(r for r in rows if r["venue"] == "okx")
    assert okx["book_rule_us_per_frame"] is not None  # WebSocket snapshots: the chain and checksum are timed
    coinbase = next(r for r in rows if r["venue"] == "coinbase")
    assert coinbase["book_rule_us_per_frame"] is not None  # level2 snapshot, then the sequence rule
    decode.print_rows(rows)
