"""The serve role resumes where it left the trades stream: NATS down while a collector keeps collecting
(spooling), then up again → the serving daemon's analytics count every collected trade exactly once, those
the collector published while the serve daemon was away included (it resubscribes from the stream sequence
after the last trade message it took; before its first, from when it started)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import attrs
import trio

from marketflow.config import default_config
from marketflow.daemon import Daemon
from marketflow.model import Trade
from marketflow.nats.link import NatsLink
from marketflow.nats.schema import pack_trades, stream_name, subject
from marketflow.nats.serve import RecentIds, ServeStatistics, ServeSubscriber
from marketflow.nats.server import NatsServer, single
from marketflow.pipeline.bookkeeper import LiveBooks
from marketflow.pipeline.gaps import GapLedger
from marketflow.runtime.bus import Bus
from marketflow.sim import SimConfig, SimServer
from tests.conftest import sim_config
from tests.nats.conftest import with_nats
from tests.nats.test_outage import publisher
from tests.test_pg_end_to_end import wait_until


def serving(daemon: Daemon) -> ServeStatistics:
    stats = daemon.actors["nats_serve"].statistics()
    assert isinstance(stats, ServeStatistics)
    return stats


def analysed(daemon: Daemon) -> int:
    assert daemon.analytics is not None
    return daemon.analytics.statistics().trades


async def all_published(collect: Daemon, sim: SimServer) -> int:
    """Until the simulator stopped sending and the collector published everything: how many trades."""
    while True:
        before = len(sim.delivered_trades())
        await trio.sleep(0.2)
        delivered = len(sim.delivered_trades())
        stats = publisher(collect)
        if delivered == before and delivered and not (stats.spooled or stats.buffered):
            return delivered


async def test_serve_daemon_counts_every_trade_once_across_a_nats_outage(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    rate, outage_s = 40, 6.0
    sim = SimServer(SimConfig(seed=41, rate=rate, max_frames=int(rate * (outage_s + 8))))
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            base = sim_config(tmp_path / "collect", sim, markets=("spot",), buffer_max=20)
            collect = Daemon(with_nats(base, [nats_server], ("collect",), flush_interval_s=0.05))
            serve = Daemon(with_nats(sim_config(tmp_path / "serve", sim), [nats_server], ("serve",)))
            await nursery.start(serve.run)
            await nursery.start(collect.run)
            await wait_until(lambda: analysed(serve) >= 20)
            nats_server.stop()
            try:  # the collector keeps collecting: past `buffer_max`, to its spool
                await wait_until(lambda: publisher(collect).spooled >= 60)
                missed = analysed(serve)
            finally:
                nats_server.start()
            await nats_server.wait_ready()
            delivered = await all_published(collect, sim)
            with trio.move_on_after(30):  # a serve daemon that lost trades never gets there
                await wait_until(lambda: analysed(serve) >= delivered)
            served, stats = analysed(serve), serving(serve)
            await collect.stop()
            await serve.stop()
            nursery.cancel_scope.cancel()
    assert publisher(collect).replayed > 0
    assert missed < delivered
    assert served == delivered, (served, delivered, stats)


async def test_serve_daemon_started_while_nats_is_down_counts_the_trades_stored_before_it_subscribed(
    tmp_path: Path,
) -> None:
    """A serve daemon that retries slowly subscribes after the collector replayed its spool: it still
    counts those trades (its trades subscription starts when it started, not when it subscribed)."""
    server = single(tmp_path / "nats")  # nothing listens on its port yet
    sim = SimServer(SimConfig(seed=43, rate=40, max_frames=240))
    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await nursery.start(sim.run)
                base = sim_config(tmp_path / "collect", sim, markets=("spot",), buffer_max=20)
                collect = Daemon(with_nats(base, [server], ("collect",), flush_interval_s=0.05))
                slow = sim_config(tmp_path / "serve", sim)
                slow = attrs.evolve(
                    slow, supervisor=attrs.evolve(slow.supervisor, backoff_initial_s=4.0, backoff_max_s=4.0)
                )
                serve = Daemon(with_nats(slow, [server], ("serve",)))
                await nursery.start(serve.run)
                await nursery.start(collect.run)
                await wait_until(lambda: publisher(collect).spooled >= 40)
                await wait_until(lambda: serving(serve).state == "retrying")
                server.start()
                await server.wait_ready()
                delivered = await all_published(collect, sim)
                with trio.move_on_after(30):  # a serve daemon that lost trades never gets there
                    await wait_until(lambda: analysed(serve) >= delivered)
                served, stats = analysed(serve), serving(serve)
                await collect.stop()
                await serve.stop()
                nursery.cancel_scope.cancel()
    finally:
        server.stop()
    assert publisher(collect).replayed > 0
    assert stats.state == "running" and stats.duplicates == 0
    assert served == delivered, (served, delivered, stats)


async def test_resuming_where_the_stream_no_longer_holds_starts_at_its_first_message_and_counts_the_gap(
    nats_server: NatsServer,
) -> None:
    """Messages gone from the stream (`max_age`, here a purge) before the serve role resumes there: it
    starts at the stream's first message, logs once and counts what it could not see."""
    config = with_nats(default_config(env={}), [nats_server], ("serve",))
    prefix = config.nats.subject_prefix
    link = NatsLink(config.nats, "test")
    recent = RecentIds()
    recent.next_seq = 2  # took message 1 of 6, then away while messages 2..4 were dropped
    bus: Bus[Trade] = Bus("served")
    served = bus.subscribe("test", 16)
    serve = ServeSubscriber(bus, LiveBooks([], GapLedger()), recent, config)
    try:
        with trio.fail_after(30):
            await link.open()
            for i in range(6):
                trade = Trade("bybit", "BTC-USDT", str(i), Decimal(1), Decimal(1), "buy", i, i)
                for exchange, symbol, payload, msg_id, _ in pack_trades([trade]):
                    await link.publish_acked([(subject(prefix, "trades", exchange, symbol), payload, msg_id)])
            js = link._js
            assert js is not None
            await link._run("purge", js.purge_stream, stream_name(prefix, "trades"), 5)
            got: list[str] = []
            async with trio.open_nursery() as nursery:
                await nursery.start(serve.run)
                with served.receiver() as rx:
                    async for batch in rx:
                        got += [t.id for t in batch]
                        if len(got) >= 2:
                            break
                serve.request_stop()
    finally:
        await link.close()
    stats = serve.statistics()
    assert got == ["4", "5"]
    assert (stats.skipped, stats.trades) == (3, 2)
    assert recent.next_seq == 7
