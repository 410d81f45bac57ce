"""The pieces without a server: key store and `marketflow keys`, the trade ring, parameter parsing."""

from __future__ import annotations

import argparse
import json
import os
from decimal import Decimal
from pathlib import Path

import pytest
import trio

from marketflow.api.keys import (
    KeyRejected,
    KeyRequestError,
    KeyStore,
    Scope,
    add_keys_arguments,
    run_keys_command,
)
from marketflow.api.queries import QueryError, parse_bin, parse_depth, parse_limit, parse_time
from marketflow.api.ring import TradeRing
from marketflow.model import Trade, now_us
from marketflow.runtime.bus import Bus, Overflow
from tests.conftest import wait_for


def trade(i: int, ts: int, symbol: str = "BTC-USDT", lag_us: int = 2000) -> Trade:
    return Trade("bybit", symbol, str(i), Decimal("65114.20"), Decimal("0.5"), "buy", ts, ts + lag_us)


def test_key_store_round_trip(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path / "state" / "api_keys.json"))
    secret, key = store.create("ci", "read,write", days=1, now=1_000_000)
    assert secret.startswith("mf_") and len(secret) == 46 and key.scope is Scope.WRITE
    assert key.expires == 1_000_000 + 86_400_000_000
    assert store.check(secret, now=2_000_000) == key
    with pytest.raises(KeyRejected, match="expired"):
        store.check(secret, now=key.expires or 0)
    with pytest.raises(KeyRejected, match="unknown"):
        store.check(secret + "x")
    doc = json.loads(Path(store.path).read_text())
    assert secret not in Path(store.path).read_text() and doc["keys"][0]["sha256"] != secret
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    # Another process (the CLI) changes the file: this store sees it.
    other = KeyStore(store.path)
    other.revoke(key.prefix)
    with pytest.raises(KeyRejected, match="revoked"):
        store.check(secret, now=2_000_000)
    for bad in (("", "read"), ("x", ""), ("x", "root")):
        with pytest.raises(KeyRequestError):
            store.create(*bad)
    with pytest.raises(KeyRequestError, match="days"):
        store.create("x", "read", days=0)
    with pytest.raises(KeyRequestError, match="no API key"):
        store.revoke("mf_nothing")


def test_keys_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "m.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path / "var"}"\n')
    monkeypatch.delenv("MARKETFLOW_CONFIG", raising=False)
    parser = argparse.ArgumentParser()
    add_keys_arguments(parser)

    def run(*argv: str) -> int:
        return run_keys_command(parser.parse_args(["--config", str(config), *argv]))

    assert run("create", "--name", "grafana", "--scopes", "read", "--days", "30") == 0
    out, err = capsys.readouterr()
    secret = out.strip()
    assert secret.startswith("mf_") and "only time" in err
    assert run("list") == 0
    out, _ = capsys.readouterr()
    assert "grafana" in out and secret[:11] in out and secret not in out and "active" in out
    assert run("revoke", secret[:11]) == 0
    assert run("list") == 0
    assert "revoked" in capsys.readouterr().out
    assert run("create", "--name", "x", "--scopes", "root") == 2
    assert run("revoke", "mf_zzzzzzzz") == 2
    assert (tmp_path / "var" / "api_keys.json").exists()


async def test_ring_keeps_the_newest_and_knows_what_it_holds() -> None:
    bus: Bus[Trade] = Bus("trades")
    ring = TradeRing(bus.subscribe("ring", 4, Overflow.DROP_OLDEST), capacity=3)
    base = now_us() + 5_000_000  # trades after the ring started: it holds them from its start on
    async with trio.open_nursery() as nursery:
        await nursery.start(ring.run)
        await bus.publish([trade(i, base + 1_000 * i) for i in range(1, 6)])
        await bus.publish([trade(9, base + 50_000, "ETH-USDT", lag_us=3_000_000)])
        await wait_for(lambda: ring.statistics().trades >= 6)
        assert [t.id for t in ring.recent("bybit", "BTC-USDT")] == ["5", "4", "3"]
        assert [t.id for t in ring.recent("bybit", "BTC-USDT", since=base + 4_000, limit=1)] == ["5"]
        assert ring.recent("bybit", "BTC-USDT", until=base + 3_000) == []
        # Trades 1 and 2 were evicted: the ring is complete only after trade 2.
        assert ring.complete_from("bybit", "BTC-USDT") == base + 2_001
        assert ring.complete_from("bybit", "SOL-USDT") is not None  # none seen since start: none missed
        stats = ring.statistics()
        assert (stats.held, stats.markets) == (4, 2)
        lag = stats.lag["bybit"]
        assert lag.count == 6 and lag.counts[1] == 5 and lag.counts[11] == 1  # 2 ms ≤ 2.5 ms; 3 s ≤ 5 s
        ring.mark_incomplete(at=10**18)
        assert ring.complete_from("bybit", "BTC-USDT") == 10**18
        bus.close()


def test_parameter_parsing() -> None:
    assert parse_time("1700000000000", "since") == 1_700_000_000_000_000
    assert parse_time(1700000000000, "since") == 1_700_000_000_000_000
    assert parse_time("2026-08-09T12:00:19.680Z", "since") == 1_786_276_819_680_000
    assert parse_time("2026-08-09T14:00:19.680+02:00", "x") == parse_time("2026-08-09T12:00:19.680", "x")
    for bad in ("", "soon", "2026-02-30", "-1", "1e12", "99999999999999999"):
        with pytest.raises(QueryError) as caught:
            parse_time(bad, "until")
        assert caught.value.param == "until"
    assert parse_limit(None, 7) == 7 and parse_depth(None) is None
    for call in (
        lambda: parse_limit(10_001, 1),
        lambda: parse_limit(0, 1),
        lambda: parse_depth(-1),
        lambda: parse_bin("0"),
        lambda: parse_bin("x"),
    ):
        with pytest.raises(QueryError):
            call()
    assert parse_bin("1E+1") == Decimal("10") and parse_bin(None) is None
