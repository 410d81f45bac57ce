"""`marketflow bench`: the blaster speaks the venues' protocols, a case measures a real client process,
the report renders, and the CLI refuses bad options."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from marketflow.bench import blaster, mixwss, report
from marketflow.bench import case as bench_case
from marketflow.bench import plan as bench_plan
from marketflow.bench import run as bench
from marketflow.exchanges.ws import connect_ws


async def serve(nursery: trio.Nursery, frames: int, rate: float = 0.0) -> tuple[blaster.Blaster, dict]:  # type: ignore[type-arg]
    b = blaster.Blaster(frames, rate, ["BTCUSDT"], seed=1)
    urls: dict = {}  # type: ignore[type-arg]
    ready = trio.Event()

    def out(record: dict) -> None:  # type: ignore[type-arg]
        if record["event"] == "listening":
            urls.update(record)
            ready.set()

    b.out = out
    nursery.start_soon(b.serve, "127.0.0.1", 0, None, None)
    await ready.wait()
    return b, urls


async def test_blaster_bybit_acks_pongs_and_numbers_every_frame() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            _, urls = await serve(nursery, frames=3000)
            async with await connect_ws(urls["bybit-linear"]) as conn:
                await conn.send_text(
                    json.dumps({"op": "subscribe", "args": ["publicTrade.NOPE"], "req_id": "1"})
                )
                await conn.send_text(json.dumps({"op": "subscribe", "args": ["publicTrade.BTCUSDT"]}))
                await conn.send_text(json.dumps({"op": "ping", "req_id": "p"}))
                control: list[dict] = []  # type: ignore[type-arg]
                trades: list[dict] = []  # type: ignore[type-arg]
                while len(trades) < 3000 or len(control) < 3:
                    for message in await conn.receive_messages():
                        frame = json.loads(message)
                        if "topic" in frame:
                            trades.extend(frame["data"])
                        else:
                            control.append(frame)
            nursery.cancel_scope.cancel()
    refused = next(c for c in control if c.get("req_id") == "1")
    assert refused["success"] is False and "publicTrade.NOPE" in refused["ret_msg"]
    assert any(c.get("ret_msg") == "pong" for c in control)
    ids = [t["i"] for t in trades]
    assert len(set(ids)) == 3000  # every frame its own trade id
    assert [int(t["seq"]) for t in trades] == list(range(100_000_000_000, 100_000_003_000))
    now_ms = time.time() * 1000
    assert all(now_ms - 60_000 < t["T"] <= now_ms for t in trades)  # stamped when sent


async def test_blaster_binance_ids_are_contiguous_by_url_and_by_subscribe() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            _, urls = await serve(nursery, frames=500)
            by_url = await connect_ws(urls["binance"] + "/stream?streams=btcusdt@aggTrade")
            by_subscribe = await connect_ws(urls["binance"] + "/stream")
            await by_subscribe.send_text(b'{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":7}')
            for conn in (by_url, by_subscribe):
                got: list[dict] = []  # type: ignore[type-arg]
                acks = []
                while len(got) < 500:
                    for message in await conn.receive_messages():
                        frame = json.loads(message)
                        (got.append(frame["data"]) if "data" in frame else acks.append(frame))
                assert [d["a"] for d in got] == list(range(1_000_000_000_000, 1_000_000_000_500))
                assert all(d["f"] == d["l"] for d in got)
                await conn.aclose()
            assert acks == [{"result": None, "id": 7}]
            nursery.cancel_scope.cancel()


def test_a_case_measures_a_real_client(tmp_path: Path) -> None:
    env = bench.Env(tmp_path)
    result = bench.run_case(
        env, bench.Client("marketflow", "decode"), frames=20_000, rate=0, tls=True, name="decode smoke"
    )
    assert result.trades == 20_000 and result.loss == 0
    assert result.cpu_s > 0 and result.cpu_us_per_frame is not None
    assert result.rss_max > 10 * 2**20 and result.series


def test_sustained_rate_steps_down_until_nothing_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried: list[float] = []

    def fake_case(
        env: bench.Env, client: bench.Client, *, frames: int, rate: float, **kw: object
    ) -> bench.CaseResult:
        tried.append(rate)
        loss = 0 if rate <= 4000 else frames // 2
        return bench.CaseResult(
            "x", client.label, True, rate, frames, frames - loss, 3.0, 1.0, loss, 0, 0, []
        )

    monkeypatch.setattr(bench_plan, "run_case", fake_case)  # where `sustained` looks it up
    burst = bench.CaseResult("b", "c", True, 0, 10_000, 1000, 0.1, 0.1, 9000, 0, 0, [])  # 10k frames/s, lossy
    rate, cases = bench.sustained(
        bench.Env(tmp_path), bench.Client("cryptofeed", "postgres"), bench.Plan(step_seconds=3), burst, print
    )
    assert tried == [8000, 6000, 4500, 3000] and rate == 3000 and len(cases) == 4
    clean = bench.CaseResult("b", "c", True, 0, 10_000, 10_000, 0.5, 0.1, 0, 0, 0, [])
    assert bench.sustained(
        bench.Env(tmp_path), bench.Client("marketflow", "pipeline"), bench.Plan(), clean, print
    ) == (20_000, [])


def test_report_table_and_plot(tmp_path: Path) -> None:
    case = bench.CaseResult(
        "marketflow daemon postgres paced",
        "marketflow daemon postgres",
        True,
        20_000,
        1000,
        1000,
        0.05,
        0.02,
        0,
        50 * 2**20,
        49 * 2**20,
        [(0.1, 400, 50 * 2**20), (0.2, 1000, 50 * 2**20)],
        commit_latency={"samples": 1000, "p50_ms": 3.0, "p99_ms": 9.0, "max_ms": 12.0},
        commit_points=[(0.1, 3.0), (0.2, 4.0)],
    ).json()
    cf = dict(case, client="cryptofeed postgres", name="cryptofeed postgres paced", cpu_us_per_frame=40.0)
    data = {
        "machine": {"cpus": 2, "python": "3.11"},
        "cryptofeed": {"version": "3.0.1", "python": "/x"},
        "stages": [case | {"stage": "transport", "tls": True}],
        "sustained": {
            "marketflow daemon postgres": {
                "zero_loss_rate": 30000.0,
                "burst_rate": 30000.0,
                "burst_loss": 0,
                "burst_loss_pct": 0.0,
            }
        },
        "paced": [case, cf],
        "cases": [case, cf],
        "ratios": bench.ratios({"sustained": {}, "paced": [case, cf]}),
    }
    text = report.table(data)
    assert "cryptofeed 3.0.1" in text and "3.0/9.0/12.0" in text and "2.00×" in text
    png = report.plot(data, tmp_path / "b.png")
    if png is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_cli_names_a_bad_option() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "marketflow", "bench", "--storage", "mysql"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--storage: unknown storage 'mysql'" in proc.stderr


def test_bench_cli_refuses_a_coalescing_window_out_of_range() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "marketflow", "bench", "--coalesce-ms", "80"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--coalesce-ms: must be from 0 to 50, got 80" in proc.stderr


def test_the_coalescing_window_reaches_marketflow_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []

    class Started:
        def __init__(self, cmd: list[str], **kw: object) -> None:
            started.append(cmd)

    monkeypatch.setattr(subprocess, "Popen", Started)
    fake = bench.Blaster(None, {"bybit-linear": "ws://127.0.0.1:1/v5/public/linear"})  # type: ignore[arg-type]
    for window in (None, 12.5):
        env = bench.Env(tmp_path, coalesce_ms=window)
        bench_case._client_process(env, bench.Client("marketflow", "pipeline"), fake, None, tmp_path)
    default, chosen = started
    assert "--coalesce-ms" not in default  # the worker then uses the daemon's default
    assert chosen[chosen.index("--coalesce-ms") + 1] == "12.5"


@pytest.mark.parametrize("venue", ["coinbase", "kraken"])
def test_a_paced_real_mix_case_applies_every_book_update_over_wss(tmp_path: Path, venue: str) -> None:
    from marketflow.bench import mixframes

    spec = mixframes.SPECS[venue]
    env = bench.Env(
        tmp_path, exchange=venue, market=spec.market, symbol=spec.native, mix=venue, mix_frames=1500
    )
    result = bench.run_case(
        env, bench.Client("marketflow", "book"), frames=1500, rate=3000, tls=True, name=f"{venue} paced"
    )
    assert result.trades == 1500 and result.loss == 0
    book = result.final["book"]
    assert book["state"] == "SYNCED" and book["gaps"] == 0
    assert book["applied"] == mixframes.build(venue, 1500).kinds.count("book") - 1
    # Every frame gets a latency: the blaster says when it started, the client when each read was done.
    assert result.sent["frames"] == 1500 and result.sent["first_wall"] > 0
    samples = mixwss.send_latencies_us(result.final["done"], result.sent["first_wall"], 3000, 1500)
    assert len(samples) == 1500
