"""The simulator's order books: the model itself, and clients running each venue's official algorithm.

The clients below are small reference implementations written from PROTOCOLS.md (§1.6, §2.6, §3), not
from the simulator's code: a Binance spot / USD-M synchroniser (buffer, REST snapshot, drop, apply, check
`U`/`pu`) and a Bybit snapshot-plus-delta applier. Each must end equal to `SimServer.true_book`, and each
fault must show up as exactly the anomaly it promises.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from marketflow.sim import Faults, SimConfig, SimServer
from marketflow.sim.book import SimBook
from marketflow.sim.market import Formats, instrument_for
from tests.sim.test_sim_binance import http_get, start

Levels = list[tuple[str, str]]


class Gap(Exception):
    """The venue's continuity rule failed: the local book must be rebuilt."""


class LocalBook:
    """A client's book: price string → size string per side, plus the last applied update id."""

    def __init__(self) -> None:
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.last = 0

    def load(self, bids: list[list[str]], asks: list[list[str]], last: int) -> None:
        self.bids = {p: q for p, q in bids}
        self.asks = {p: q for p, q in asks}
        self.last = last

    def apply(self, bids: list[list[str]], asks: list[list[str]]) -> None:
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for price, size in levels:
                if Decimal(size) == 0:
                    side.pop(price, None)  # deleting an unknown level is normal
                else:
                    side[price] = size

    def top(self, depth: int) -> tuple[Levels, Levels]:
        bids = sorted(self.bids.items(), key=lambda kv: Decimal(kv[0]), reverse=True)[:depth]
        asks = sorted(self.asks.items(), key=lambda kv: Decimal(kv[0]))[:depth]
        return bids, asks

    def crossed(self) -> bool:
        return max(map(Decimal, self.bids)) >= min(map(Decimal, self.asks))


async def next_json(ws: WebSocketConnection) -> Any:
    return json.loads(await ws.get_message())


# -- Binance ----------------------------------------------------------------------------------------------


class BinanceClient:
    """PROTOCOLS §2.6 (spot) and §3 (USD-M) local-book procedures."""

    def __init__(self, server: SimServer, market: str, symbol: str, ws: WebSocketConnection) -> None:
        self.server = server
        self.market = market
        self.symbol = symbol
        self.ws = ws
        self.book = LocalBook()
        self.stale_snapshots = 0

    async def event(self) -> dict[str, Any]:
        while True:
            msg = await next_json(self.ws)
            data = msg.get("data", msg)
            if data.get("e") == "depthUpdate":
                return data  # type: ignore[no-any-return]

    async def snapshot(self) -> dict[str, Any]:
        path = "/api/v3/depth" if self.market == "spot" else "/fapi/v1/depth"
        limit = 5000 if self.market == "spot" else 1000
        status, _, body = await http_get(self.server, f"{path}?symbol={self.symbol}&limit={limit}")
        assert status == 200
        return body  # type: ignore[no-any-return]

    async def sync(self) -> None:
        buffered = [await self.event()]
        first_u = buffered[0]["U"]
        while True:
            snap = await self.snapshot()
            if snap["lastUpdateId"] >= first_u or self.market == "usdm":
                break
            self.stale_snapshots += 1  # step 4: older than the first buffered event, fetch again
        last = snap["lastUpdateId"]
        self.book.load(snap["bids"], snap["asks"], last)
        while True:  # drop what the snapshot already holds
            event = buffered.pop(0) if buffered else await self.event()
            if (self.market == "spot" and event["u"] > last) or (
                self.market == "usdm" and event["u"] >= last
            ):
                break
        if self.market == "spot":
            assert event["U"] <= last + 1 <= event["u"]
        elif not event["U"] <= last <= event["u"]:
            self.stale_snapshots += 1
            raise Gap(f"first event {event['U']}..{event['u']} does not cover {last}")
        self._apply(event)
        for event in buffered:
            self.apply(event)

    def _apply(self, event: dict[str, Any]) -> None:
        self.book.apply(event["b"], event["a"])
        self.book.last = event["u"]

    def apply(self, event: dict[str, Any]) -> None:
        if self.market == "spot":
            if event["u"] < self.book.last:
                return
            if event["U"] > self.book.last + 1:
                raise Gap(f"U {event['U']} after u {self.book.last}")
        elif event["pu"] != self.book.last:
            raise Gap(f"pu {event['pu']} after u {self.book.last}")
        self._apply(event)

    async def until_equal_to_truth(self) -> None:
        """Apply events until the local id is the true book's, then compare every level."""
        while True:
            bids, asks, last = self.server.true_book("binance", self.market, self.symbol, 5000)
            if self.book.last == last:
                assert self.book.top(5000) == (bids, asks)
                return
            assert self.book.last < last
            self.apply(await self.event())


@pytest.mark.parametrize(
    ("market", "path"),
    [
        ("spot", "/ws/btcusdt@depth@100ms"),
        ("spot", "/stream?streams=ethusdt@depth@100ms"),
        ("usdm", "/usdm/public/ws/btcusdt@depth"),
        ("usdm", "/usdm/stream?streams=ethusdt@depth@100ms"),
    ],
)
async def test_binance_client_ends_equal_to_the_true_book(
    nursery: trio.Nursery, market: str, path: str
) -> None:
    server = await start(nursery, book_rate=20.0)
    symbol = "BTCUSDT" if "btcusdt" in path else "ETHUSDT"
    with trio.fail_after(10):
        async with open_websocket_url(server.binance_ws_base("spot") + path) as ws:
            client = BinanceClient(server, market, symbol, ws)
            await client.sync()
            for _ in range(3):
                await client.until_equal_to_truth()
                for _ in range(3):
                    client.apply(await client.event())
    assert client.stale_snapshots == 0


# -- Bybit ------------------------------------------------------------------------------------------------


class BybitClient:
    """PROTOCOLS §1.6: a snapshot resets the book (so does u = 1); deltas must go on with u + 1."""

    def __init__(self) -> None:
        self.book = LocalBook()
        self.seq = 0
        self.gaps = 0
        self.snapshots = 0

    def apply(self, frame: dict[str, Any]) -> None:
        data = frame["data"]
        if frame["type"] == "snapshot":
            self.snapshots += 1
            self.book.load(data["b"], data["a"], data["u"])
        else:
            if data["u"] != self.book.last + 1:
                self.gaps += 1
            self.book.apply(data["b"], data["a"])
            self.book.last = data["u"]
        self.seq = data["seq"]


async def bybit_frames(ws: WebSocketConnection, topic: str) -> Any:
    while True:
        msg = await next_json(ws)
        if msg.get("topic") == topic:
            return msg


@pytest.mark.parametrize("depth", [1, 50, 200, 1000])
@pytest.mark.parametrize("category", ["spot", "linear"])
async def test_bybit_client_ends_equal_to_the_true_top_n(
    nursery: trio.Nursery, category: str, depth: int
) -> None:
    server = await start(nursery, book_rate=20.0, book_levels=120)
    topic = f"orderbook.{depth}.BTCUSDT"
    client = BybitClient()
    matched = 0
    kinds = set()
    with trio.fail_after(10):
        async with open_websocket_url(server.bybit_ws_url(category)) as ws:
            await ws.send_message(json.dumps({"op": "subscribe", "args": [topic]}))
            assert (await next_json(ws))["success"] is True
            first = await bybit_frames(ws, topic)
            assert first["type"] == "snapshot"
            client.apply(first)
            while matched < 5:
                frame = await bybit_frames(ws, topic)
                kinds.add(frame["type"])
                if depth == 1:
                    assert frame["data"]["u"] == client.book.last + 1
                client.apply(frame)
                bids, asks, seq = server.true_book("bybit", category, "BTCUSDT", depth)
                if seq == client.seq:
                    assert client.book.top(depth) == (bids, asks)
                    assert len(bids) == min(depth, 120) or depth > 120
                    matched += 1
    assert client.gaps == 0
    assert kinds == ({"snapshot"} if depth == 1 else {"delta"})
    keys = list(first)
    if category == "spot" or depth == 1:
        assert keys[:3] == ["topic", "ts", "type"]
    else:
        assert keys[:3] == ["topic", "type", "ts"]
    assert ("cts" in keys) == (category != "spot")
    assert list(first["data"]) == ["s", "b", "a", "u", "seq"]


async def test_bybit_level1_is_pushed_again_when_unchanged(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    server = await start(nursery, book_rate=0.05)  # no update for 20 s
    with trio.fail_after(8):
        async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
            await ws.send_message('{"op":"subscribe","args":["orderbook.1.ETHUSDT"]}')
            await next_json(ws)
            first = await bybit_frames(ws, "orderbook.1.ETHUSDT")
            opened = trio.current_time()
            again = await bybit_frames(ws, "orderbook.1.ETHUSDT")
            assert trio.current_time() - opened == pytest.approx(3.0)  # LEVEL1_RESEND_S
    # `ts` is wall-clock milliseconds while 3 s passed on the virtual clock: it may not have moved.
    assert again["type"] == "snapshot" and again["data"] == first["data"] and again["ts"] >= first["ts"]


# -- the model --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exchange", "category"), [("binance", "spot"), ("binance", "usdm"), ("bybit", "linear")]
)
def test_sim_book_stays_sane(exchange: str, category: str) -> None:
    book = SimBook(3, exchange, category, instrument_for(category, "BTCUSDT", exchange), levels=100)
    start = book.best_bid()
    formats = Formats(book.instrument)
    last = book.last_id
    for _ in range(3000):
        tick = book.step()
        assert not book.crossed()
        assert tick.prev_id == last and tick.first_id <= tick.last_id
        if category == "usdm":
            assert tick.first_id > last + 1  # ids are skipped between updates
        else:
            assert tick.first_id == last + 1
        last = tick.last_id
        assert tick.bids or tick.asks
        assert 95 <= len(book.bids) <= 120 and 95 <= len(book.asks) <= 120
    assert abs(book.best_bid() - start) < start * 0.1
    bids, _ = book.top(3)
    assert all(
        formats.price(p).endswith(
            "0" * (formats.instrument.price_decimals - formats.instrument.tick_decimals)
        )
        for p, _ in bids
    )


def test_sim_book_is_deterministic_and_faults_do_not_change_it() -> None:
    inst = instrument_for("spot", "ETHUSDT", "binance")
    one = SimBook(9, "binance", "spot", inst)
    two = SimBook(9, "binance", "spot", inst, skip_every=3)
    other = SimBook(10, "binance", "spot", inst)
    for n in range(200):
        if n == 50:
            two.skip_next = 2
            two.stale_next = 4
            two.restart_next = True
        a, b = one.step(), two.step()
        assert (a.bids, a.asks, a.first_id, a.last_id) == (b.bids, b.asks, b.first_id, b.last_id)
    assert one.top(1000) == two.top(1000) != other.top(1000)


def test_state_back_rebuilds_earlier_books() -> None:
    book = SimBook(4, "bybit", "spot", instrument_for("spot", "BTCUSDT"))
    history = []
    for _ in range(80):
        history.append((*book.top(1000), book.last_id))
        book.step()
    for back in (1, 5, 30, 64):
        assert book.state_back(back, 1000) == history[-back]
    assert book.state_back(70, 1000) == history[-64]  # no further back than the undo log reaches


def test_cross_next_marks_one_update_and_leaves_the_book_sane() -> None:
    book = SimBook(4, "binance", "spot", instrument_for("spot", "BTCUSDT", "binance"))
    book.step()
    book.cross_next = True
    marks = [book.step().cross for _ in range(4)]
    assert marks == [True, False, False, False] and not book.crossed()


# -- faults over the wire ------------------------------------------------------------------------------------


def _gaps(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(a["u"], b["U"]) for a, b in zip(events, events[1:], strict=False) if b["U"] != a["u"] + 1]


def _steps(frames: list[dict[str, Any]]) -> list[int]:
    return [b["data"]["u"] - a["data"]["u"] for a, b in zip(frames, frames[1:], strict=False)]


async def test_skip_update_binance_spot_is_one_gap(nursery: trio.Nursery) -> None:
    server = await start(nursery, book_rate=20.0)
    with trio.fail_after(8):
        async with open_websocket_url(server.binance_ws_base("spot") + "/ws/btcusdt@depth@100ms") as ws:
            client = BinanceClient(server, "spot", "BTCUSDT", ws)
            events = [await client.event() for _ in range(3)]
            server.skip_update("binance", "spot", "BTCUSDT")
            # Events already on their way when the update was skipped come first: read past the gap.
            while not _gaps(events):
                events.append(await client.event())
            events += [await client.event() for _ in range(8)]
    gaps = _gaps(events)
    assert len(gaps) == 1 and gaps[0][1] > gaps[0][0] + 1


async def test_skip_update_binance_usdm_breaks_the_pu_chain_once(nursery: trio.Nursery) -> None:
    server = await start(nursery, book_rate=20.0)
    with trio.fail_after(8):
        async with open_websocket_url(
            server.binance_ws_base("usdm") + "/public/ws/btcusdt@depth@100ms"
        ) as ws:
            client = BinanceClient(server, "usdm", "BTCUSDT", ws)
            events = [await client.event() for _ in range(3)]
            server.skip_update("binance", "usdm", "BTCUSDT")
            while not [b for a, b in zip(events, events[1:], strict=False) if b["pu"] != a["u"]]:
                events.append(await client.event())
            events += [await client.event() for _ in range(8)]
    breaks = [b for a, b in zip(events, events[1:], strict=False) if b["pu"] != a["u"]]
    assert len(breaks) == 1


async def test_skip_every_n_updates(nursery: trio.Nursery) -> None:
    server = await start(nursery, book_rate=10.0, faults=Faults(skip_every_n_updates=4))
    with trio.fail_after(8):
        async with open_websocket_url(server.binance_ws_base("spot") + "/ws/ethusdt@depth@100ms") as ws:
            client = BinanceClient(server, "spot", "ETHUSDT", ws)
            events = [await client.event() for _ in range(20)]
    gaps = [n for n, (a, b) in enumerate(zip(events, events[1:], strict=False)) if b["U"] != a["u"] + 1]
    # Every 4th update is missing: a gap after every 3 events.
    assert len(gaps) >= 5 and all(b - a == 3 for a, b in zip(gaps, gaps[1:], strict=False))


async def test_skip_update_bybit_jumps_u_by_two(nursery: trio.Nursery) -> None:
    server = await start(nursery, book_rate=20.0)
    topic = "orderbook.50.BTCUSDT"
    with trio.fail_after(8):
        async with open_websocket_url(server.bybit_ws_url("linear")) as ws:
            await ws.send_message(json.dumps({"op": "subscribe", "args": [topic]}))
            await next_json(ws)
            frames = [await bybit_frames(ws, topic) for _ in range(4)]
            server.skip_update("bybit", "linear", "BTCUSDT")
            # Frames already on their way when the update was skipped come first: read past the jump.
            while 2 not in _steps(frames):
                frames.append(await bybit_frames(ws, topic))
            frames += [await bybit_frames(ws, topic) for _ in range(4)]
    steps = _steps(frames)
    assert sorted(steps) == [1] * (len(steps) - 1) + [2]


@pytest.mark.parametrize(
    ("exchange", "market", "path"),
    [
        ("bybit", "spot", "orderbook.50.ETHUSDT"),
        ("bybit", "linear", "orderbook.1.ETHUSDT"),
        ("binance", "spot", "/ws/ethusdt@depth@100ms"),
        ("binance", "usdm", "/usdm/public/ws/ethusdt@depth"),  # 250 ms: 5 updates per event
    ],
)
async def test_cross_book_crosses_one_message_then_repairs(
    nursery: trio.Nursery, exchange: str, market: str, path: str
) -> None:
    server = await start(nursery, book_rate=20.0)
    crossed = []
    with trio.fail_after(8):
        if exchange == "bybit":
            async with open_websocket_url(server.bybit_ws_url(market)) as ws:
                await ws.send_message(json.dumps({"op": "subscribe", "args": [path]}))
                await next_json(ws)
                bybit = BybitClient()
                bybit.apply(await bybit_frames(ws, path))
                server.cross_book(exchange, market, "ETHUSDT")
                for _ in range(6):
                    bybit.apply(await bybit_frames(ws, path))
                    crossed.append(bybit.book.crossed())
                    bids, asks, _ = server.true_book(exchange, market, "ETHUSDT", 1)
                    assert Decimal(bids[0][0]) < Decimal(asks[0][0])  # the truth never crosses
            assert bybit.gaps == 0
        else:
            async with open_websocket_url(server.binance_ws_base("spot") + path) as ws:
                binance = BinanceClient(server, market, "ETHUSDT", ws)
                await binance.sync()
                server.cross_book(exchange, market, "ETHUSDT")
                for _ in range(6):
                    binance.apply(await binance.event())
                    crossed.append(binance.book.crossed())
                await binance.until_equal_to_truth()
    # The message right after the fault crosses the book, the next one repairs it.
    assert crossed.count(True) == 1 and crossed.index(True) <= 1


async def test_a_resync_after_the_crossing_lands_after_it(nursery: trio.Nursery) -> None:
    server = await start(nursery, book_rate=10.0)
    with trio.fail_after(8):
        async with open_websocket_url(server.binance_ws_base("spot") + "/ws/btcusdt@depth@100ms") as ws:
            client = BinanceClient(server, "spot", "BTCUSDT", ws)
            await client.sync()
            server.cross_book("binance", "spot", "BTCUSDT")
            while True:
                event = await client.event()
                client.apply(event)
                if client.book.crossed():
                    break
            # Straight away (the next update is ~100 ms off) the REST answer waits for the repair.
            snapshot = await client.snapshot()
            assert snapshot["lastUpdateId"] > event["u"]
            # So the official procedure drops the crossing message and the rebuilt book is sane at once.
            client.book = LocalBook()
            await client.sync()
            assert client.book.last > event["u"] and not client.book.crossed()
            await client.until_equal_to_truth()


async def test_stale_snapshot_is_older_than_the_first_buffered_event(nursery: trio.Nursery) -> None:
    server = await start(nursery, book_rate=20.0)
    with trio.fail_after(8):
        async with open_websocket_url(server.binance_ws_base("spot") + "/ws/btcusdt@depth@100ms") as ws:
            client = BinanceClient(server, "spot", "BTCUSDT", ws)
            server.stale_snapshot("binance", "spot", "BTCUSDT", updates_back=5)
            await client.sync()  # the official algorithm fetches again, then synchronises
            assert client.stale_snapshots == 1
            await client.until_equal_to_truth()
        # USD-M: the stale snapshot fails the `U <= lastUpdateId <= u` test on the first event.
        async with open_websocket_url(
            server.binance_ws_base("usdm") + "/public/ws/btcusdt@depth@100ms"
        ) as ws:
            client = BinanceClient(server, "usdm", "BTCUSDT", ws)
            await client.event()
            server.stale_snapshot("binance", "usdm", "BTCUSDT")
            with pytest.raises(Gap):
                await client.sync()
            await client.sync()
            await client.until_equal_to_truth()


async def test_bybit_restart_is_a_snapshot_with_u_1(nursery: trio.Nursery) -> None:
    server = await start(nursery, book_rate=20.0)
    topics = ["orderbook.50.BTCUSDT", "orderbook.1.BTCUSDT"]
    with trio.fail_after(8):
        async with open_websocket_url(server.bybit_ws_url("spot")) as ws:
            await ws.send_message(json.dumps({"op": "subscribe", "args": topics}))
            await next_json(ws)
            client = BybitClient()
            client.apply(await bybit_frames(ws, topics[0]))
            for _ in range(3):
                client.apply(await bybit_frames(ws, topics[0]))
            server.bybit_restart("spot", "BTCUSDT")
            # Frames already on their way come first: read until the restart and three more after it.
            frames: list[dict[str, Any]] = []
            while True:
                deep = [f for f in frames if f["topic"] == topics[0]]
                restarts = [i for i, f in enumerate(deep) if f["data"]["u"] == 1]
                if restarts and len(deep) - restarts[0] >= 4:
                    break
                frames.append(await next_json(ws))
    deep = [f for f in frames if f["topic"] == topics[0]]
    restarted = deep.index(next(f for f in deep if f["data"]["u"] == 1))
    assert deep[restarted]["type"] == "snapshot"
    assert all(f["type"] == "delta" for f in deep[:restarted])
    assert [f["data"]["u"] for f in deep[restarted:]] == list(range(1, len(deep) - restarted + 1))
    top = [f for f in frames if f["topic"] == topics[1]]
    assert any(f["data"]["u"] == 1 and f["type"] == "snapshot" for f in top)
    for frame in deep:
        client.apply(frame)
    assert client.gaps == 0 and client.snapshots == 2


async def test_book_rate(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    server = await start(nursery)  # the default, 10 updates/s
    with trio.fail_after(5):
        async with open_websocket_url(server.binance_ws_base("spot") + "/ws/btcusdt@depth@100ms") as ws:
            await next_json(ws)
            got = 0
            with trio.move_on_after(1.05):  # off the 100 ms grid: no update ties with the deadline
                while True:
                    await next_json(ws)
                    got += 1
    assert got == 10
    assert server.statistics().book_frames_sent >= got


async def test_rate_zero_is_as_fast_as_the_client_reads(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    server = await start(nursery, book_rate=0.0, book_levels=50)
    with trio.fail_after(5):
        async with open_websocket_url(server.binance_ws_base("spot") + "/ws/btcusdt@depth@100ms") as ws:
            client = BinanceClient(server, "spot", "BTCUSDT", ws)
            started = trio.current_time()
            events = [await client.event() for _ in range(500)]
            elapsed = trio.current_time() - started
    assert elapsed == 0.0  # no pacing at all: 50 s of virtual time at the default 10 updates/s
    assert all(b["U"] == a["u"] + 1 for a, b in zip(events, events[1:], strict=False))


async def test_true_book_names(nursery: trio.Nursery) -> None:
    server = SimServer(SimConfig())
    with pytest.raises(ValueError, match="unknown exchange/market"):
        server.true_book("bybit", "usdm", "BTCUSDT", 5)
    with pytest.raises(ValueError, match="not listed"):
        server.skip_update("binance", "spot", "DOGEUSDT")
    bids, asks, last = server.true_book("binance", "usdm", "BTCUSDT", 3)
    assert len(bids) == len(asks) == 3 and bids[0][0] == "65000.00" and asks[0][0] == "65000.10"
    assert last > 9_000_000_000_000
