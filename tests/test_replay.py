"""`marketflow replay` of the shipped capture (tests/fixtures/capture, made by scripts/make_capture_fixture.py
from the simulator: Bybit and Binance spot, trades and books, one dropped connection each).

The same files give the same rows and the same analytics every run; the stored trades are exactly the
trades in the frames (parsed here independently) plus what the recorded REST answers backfilled; recorded
time drives the pipeline's clock; corrupt and truncated files are reported by file and line.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import zstandard

from marketflow.analytics.engine import NotLiveError
from marketflow.config import BooksConfig, Config, default_config
from marketflow.daemon import Daemon
from marketflow.progress import Progress
from marketflow.replay import Replay, ReplayClock, ReplaySummary, parse_speed
from tests.conftest import stored_rows

FIXTURE = Path(__file__).parent / "fixtures" / "capture"
TABLES = ("trades", "candles", "book_snapshots", "gaps")
PY = sys.executable

Row = tuple[str, str, str, str, str, str, int]


def fixture_files() -> list[Path]:
    files = sorted(FIXTURE.glob("*.jsonl.zst"))
    assert len(files) == 4, "regenerate with scripts/make_capture_fixture.py"
    return files


def replay_config(db: Path) -> Config:
    base = default_config(env={})
    return attrs.evolve(
        base,
        storage=attrs.evolve(base.storage, url=f"sqlite:///{db}"),
        # Sampled often enough that the 3 s capture gives book snapshots and several candles.
        books=BooksConfig(snapshot_interval_s=0.5, snapshot_depth=5),
        analytics=attrs.evolve(base.analytics, candle_intervals=("1s", "1m")),
    )


def table(db: Path, name: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return sorted(conn.execute(f"SELECT * FROM {name}").fetchall(), key=repr)  # noqa: S608
    finally:
        conn.close()


def analytics_answers(daemon: Daemon) -> dict[str, Any]:
    engine = daemon.analytics
    assert engine is not None
    answers: dict[str, Any] = {}
    for exchange, symbol in sorted(engine.markets()):
        key = f"{exchange}:{symbol}"
        answers[key + ":candles"] = engine.candles(exchange, symbol, "1s")
        answers[key + ":flow"] = engine.order_flow(exchange, symbol, "1s", footprint=True)
        try:
            answers[key + ":profile"] = engine.volume_profile(exchange, symbol)
        except NotLiveError as exc:
            answers[key + ":profile"] = str(exc)
    return answers


def replay_fast(db: Path) -> tuple[Replay, ReplaySummary]:
    replay = Replay(replay_config(db), fixture_files())
    summary = trio.run(replay.run, clock=ReplayClock())
    return replay, summary


def capture_lines() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(header, record) for every record of every fixture file, parsed without marketflow's reader."""
    out = []
    for path in fixture_files():
        reader = zstandard.ZstdDecompressor().stream_reader(path.read_bytes())
        lines = reader.read().decode().splitlines()
        header = json.loads(lines[0])
        out += [(header, json.loads(line)) for line in lines[1:]]
    return out


def trades_in_frames() -> list[Row]:
    rows: list[Row] = []
    for header, record in capture_lines():
        if header["kind"] != "ws" or "frame" not in record:
            continue
        message = json.loads(record["frame"])
        if header["exchange"] == "bybit" and str(message.get("topic", "")).startswith("publicTrade."):
            for t in message["data"]:
                symbol = t["s"].removesuffix("USDT") + "-USDT"
                side = t["S"].lower()
                rows.append(("bybit", symbol, t["i"], t["p"], t["v"], side, int(t["T"]) * 1000))
        elif header["exchange"] == "binance" and str(message.get("stream", "")).endswith("@aggTrade"):
            t = message["data"]
            symbol = t["s"].removesuffix("USDT") + "-USDT"
            side = "sell" if t["m"] else "buy"  # the buyer was the maker: the taker sold
            rows.append(("binance", symbol, str(t["a"]), t["p"], t["q"], side, int(t["T"]) * 1000))
    return rows


def test_replaying_the_shipped_capture_twice_gives_identical_rows_and_analytics(tmp_path: Path) -> None:
    runs = []
    for n in (1, 2):
        db = tmp_path / f"run{n}.db"
        replay, summary = replay_fast(db)
        assert summary.errors == () and summary.truncated == ()
        assert replay.daemon is not None
        runs.append(
            (
                {name: table(db, name) for name in TABLES},
                analytics_answers(replay.daemon),
                attrs.evolve(summary, elapsed_s=0.0, storage=""),
            )
        )
    first, second = runs
    assert first == second
    tables, answers, summary = first
    assert all(tables[name] for name in TABLES), {name: len(rows) for name, rows in tables.items()}
    assert {row[0] for row in tables["book_snapshots"]} == {"bybit", "binance"}
    assert {row[2] for row in tables["candles"]} == {"1s", "1m"}
    assert len(answers) == 12 and all(answers[k]["candles"] for k in answers if k.endswith(":candles"))
    assert summary.files == 4 and summary.connections == 2 and summary.events == 6
    assert summary.books == summary.books_seeded == 4  # Binance books seeded by the recorded REST snapshots
    assert summary.rest_missing == 0 and summary.rest_served >= 2
    assert summary.rows_written == len(tables["trades"]) >= summary.trades


def test_stored_trades_are_the_trades_in_the_capture(tmp_path: Path) -> None:
    db = tmp_path / "replay.db"
    _, summary = replay_fast(db)
    stored = stored_rows(db)
    assert not [key for key, n in Counter((r[0], r[1], r[2]) for r in stored).items() if n > 1]
    expected = trades_in_frames()
    assert len(expected) == len(set(expected)) == summary.trades
    assert {"bybit", "binance"} == {r[0] for r in expected}
    assert set(expected) <= set(stored)
    # Anything else was recovered over REST after the recorded reconnect, from the recorded answers.
    rest_bodies = "".join(r.get("body", "") for h, r in capture_lines() if h["kind"] == "rest")
    for row in set(stored) - set(expected):
        assert f'"{row[2]}"' in rest_bodies or f'"a":{row[2]},' in rest_bodies
    # Exact decimals, as the exchange wrote them: every stored price and amount is, character for
    # character, a string of a recorded frame (parsed above without marketflow) or of a recorded REST answer.
    written = {value for row in expected for value in (row[3], row[4])}
    for row in stored:
        assert Decimal(row[3]) > 0 and Decimal(row[4]) > 0
        for value in (row[3], row[4]):
            assert value in written or f'"{value}"' in rest_bodies, (row, value)


def test_recorded_time_drives_the_pipeline_clock(tmp_path: Path) -> None:
    db = tmp_path / "replay.db"
    replay_fast(db)
    reconnects = {
        header["feed"]: (record["down_since"], record["recv"])
        for header, record in capture_lines()
        if record.get("event") == "reconnected"
    }
    assert set(reconnects) == {"bybit-spot", "binance-spot"}
    gaps = {(r[0], r[1], r[2]): (r[3], r[4]) for r in table(db, "gaps")}
    for exchange in ("bybit", "binance"):
        down_since, up_at = reconnects[f"{exchange}-spot"]
        for symbol in ("BTC-USDT", "ETH-USDT"):
            assert gaps[(exchange, symbol, "book")] == (down_since, up_at)
    # Book samples are taken on the recorded clock: every 0.5 s of it, the same instants for every book.
    stamps = sorted({r[2] for r in table(db, "book_snapshots")})
    assert all(round((b - a) / 1e6, 6) % 0.5 == 0 for a, b in zip(stamps, stamps[1:], strict=False))


def test_recorded_speed_takes_the_recorded_time(tmp_path: Path) -> None:
    """At 10x every recorded instant is reached a tenth of its recorded offset after the first one, in
    Trio time on a virtual clock (autojump): exact, whatever this machine's speed."""
    fast_db, slow_db = tmp_path / "fast.db", tmp_path / "slow.db"
    _, fast = replay_fast(fast_db)
    reached: list[tuple[int, float]] = []

    class Observed(Replay):
        async def until(self, recv_us: int) -> None:
            await super().until(recv_us)
            reached.append((recv_us, trio.current_time()))

    replay = Observed(replay_config(slow_db), fixture_files(), speed=10.0)
    slow = trio.run(replay.run, clock=trio.testing.MockClock(autojump_threshold=0))
    assert fast.recorded_s > 2.0 and slow.recorded_s == fast.recorded_s
    (first_us, first_t), *_ = reached
    frames = [(recv, t) for recv, t in reached if recv <= first_us + round(fast.recorded_s * 1e6)]
    assert len(frames) > 100
    assert [t - first_t for _, t in frames] == pytest.approx(
        [(recv - first_us) / 1e6 / 10 for recv, _ in frames]
    )
    assert frames[-1][1] - first_t == pytest.approx(fast.recorded_s / 10)
    assert sorted(stored_rows(slow_db)) == sorted(stored_rows(fast_db))


def test_speed_argument() -> None:
    assert parse_speed("fast") is None
    assert parse_speed("recorded") == 1.0
    assert parse_speed("2.5") == 2.5
    for bad in ("0", "-1", "slow", "inf", "nan"):
        with pytest.raises(ValueError, match="--speed must be fast, recorded or a factor"):
            parse_speed(bad)


def marketflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MARKETFLOW_CONFIG": "", "MARKETFLOW_STORAGE_URL": ""}
    return subprocess.run(
        [PY, "-m", "marketflow", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_replays_into_the_given_storage_quietly(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    result = marketflow("replay", *map(str, fixture_files()), "--url", f"sqlite:///{db}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not a terminal: no progress line, and nothing worth a warning
    assert result.stdout.startswith("replayed 4 files (2 connections): ")
    assert f"storage: sqlite:///{db}" in result.stdout
    assert set(trades_in_frames()) <= set(stored_rows(db))
    assert not (tmp_path / "var").exists()  # nothing written beside the chosen storage


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    files = [str(p) for p in fixture_files()]
    assert marketflow("replay", *files, "--speed", "warp", cwd=tmp_path).returncode == 2
    assert marketflow("replay", *files, "--url", "mysql://x", cwd=tmp_path).returncode == 2
    assert marketflow("replay", cwd=tmp_path).returncode == 2


def rewrite(source: Path, target: Path, edit: Any) -> None:
    text = zstandard.ZstdDecompressor().stream_reader(source.read_bytes()).read()
    lines = text.split(b"\n")
    target.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(edit(lines))))


def test_a_corrupt_record_is_named_and_what_came_before_is_kept(tmp_path: Path) -> None:
    bybit = next(p for p in fixture_files() if p.name.startswith("bybit-"))
    broken = tmp_path / bybit.name

    def corrupt(lines: list[bytes]) -> list[bytes]:
        lines[39] = b'{"recv": 17, "frame": "cut'  # line 40 of the file
        return lines

    rewrite(bybit, broken, corrupt)
    db = tmp_path / "broken.db"
    result = marketflow("replay", str(broken), "--url", f"sqlite:///{db}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"marketflow replay: error: {broken}:40: corrupt record" in result.stderr
    assert "replayed 1 files" in result.stdout
    assert len(stored_rows(db)) > 0


def test_a_truncated_file_is_reported_and_replayed_up_to_its_end(tmp_path: Path) -> None:
    binance = next(p for p in fixture_files() if p.name.startswith("binance-"))
    cut = tmp_path / binance.name
    data = binance.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    db = tmp_path / "cut.db"
    result = marketflow("replay", str(cut), "--url", f"sqlite:///{db}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"marketflow replay: note: {cut}: the zstd stream ends early after line " in result.stderr
    assert 0 < len(stored_rows(db)) < sum(1 for r in trades_in_frames() if r[0] == "binance")


def test_a_file_that_is_not_a_capture_stops_before_anything_runs(tmp_path: Path) -> None:
    other = tmp_path / "notes.jsonl.zst"
    other.write_bytes(zstandard.ZstdCompressor().compress(b'{"hello": "world"}\n'))
    result = marketflow("replay", str(other), "--url", f"sqlite:///{tmp_path}/x.db", cwd=tmp_path)
    assert result.returncode == 1
    assert f"{other}:1: not a capture header" in result.stderr
    assert not (tmp_path / "x.db").exists()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_one_line_on_a_terminal_and_nothing_elsewhere() -> None:
    terminal = FakeTerminal()
    with Progress(total=200, label="replay", unit="frames", stream=terminal) as progress:
        progress.advance(50)
        assert progress.line().startswith("replay  50/200 frames  25%  ")
        assert "ETA 0:" in progress.line()
    drawn = terminal.getvalue()
    assert drawn.startswith("\rreplay  50/200 frames  25%") and "\n" not in drawn
    assert drawn.endswith("\r")  # erased: the caller's summary goes on a clean line
    log = io.StringIO()
    with Progress(total=200, label="replay", stream=log) as quiet:
        quiet.advance(200)
    assert log.getvalue() == "" and quiet.done == 200 and not quiet.enabled
