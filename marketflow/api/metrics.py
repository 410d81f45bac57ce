"""The daemon's statistics, read when asked: `/metrics` (Prometheus) and the status queries.

`status`, `storage_stats` and `system_info` are part of the query layer (`queries.py` exports them): the
JSON of `/collectors/status[/{name}]`, `/collectors/storage/stats` and the MCP `system_info` tool.

Nothing on the data path updates a metric: the actors keep their own counters (`statistics()`), and
:class:`DaemonCollector` turns a snapshot of them into metric families when Prometheus scrapes. The one
histogram (exchange → receipt lag) is bucketed by the trade ring actor, off the feeds' path.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs
import trio
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from marketflow import __version__
from marketflow.model import now_us, us_to_iso

if TYPE_CHECKING:
    from marketflow.api.queries import QueryContext

__all__ = [
    "CONTENT_TYPE",
    "DaemonCollector",
    "make_registry",
    "render",
    "status",
    "storage_stats",
    "system_info",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _num(value: Any) -> float:
    return 0.0 if value is None else float(value)


class DaemonCollector(Collector):
    """Metric families of one daemon (and its trade ring), built from `statistics()` on each scrape."""

    def __init__(self, ctx: QueryContext) -> None:
        self._ctx = ctx

    def collect(self) -> Iterator[Metric]:
        yield from self._feeds()
        yield from self._decoders()
        yield from self._actors()
        yield from self._buses()
        yield from self._storage()
        yield from self._sinks()
        yield from self._books()
        yield from self._lag()
        yield from self._capture()
        yield from self._archive()
        yield from self._heap()
        yield from self._limits()

    def _feeds(self) -> Iterator[Metric]:
        labels = ["connection", "exchange", "market"]
        frames = CounterMetricFamily("marketflow_feed_frames", "WebSocket messages received", labels=labels)
        data = CounterMetricFamily("marketflow_feed_data_frames", "Data frames published", labels=labels)
        size = CounterMetricFamily("marketflow_feed_bytes", "Bytes of messages received", labels=labels)
        connects = CounterMetricFamily("marketflow_feed_connects", "Connections opened", labels=labels)
        reconnects = CounterMetricFamily(
            "marketflow_feed_reconnects", "Connections opened after the first", labels=labels
        )
        disconnects = CounterMetricFamily("marketflow_feed_disconnects", "Connections lost", labels=labels)
        pongs = CounterMetricFamily("marketflow_feed_pongs", "Pongs received", labels=labels)
        unknown = CounterMetricFamily(
            "marketflow_feed_unknown_control", "Control messages not understood", labels=labels
        )
        rejected = GaugeMetricFamily(
            "marketflow_feed_rejected_subscriptions", "Topics the exchange refused", labels=labels
        )
        streaming = GaugeMetricFamily(
            "marketflow_feed_streaming", "1 while the connection streams data", labels=labels
        )
        age = GaugeMetricFamily(
            "marketflow_feed_last_message_age_seconds", "Seconds since the last message", labels=labels
        )
        now = now_us()
        daemon = self._ctx.daemon
        for name, c in daemon.feed_counters.items():
            conn = daemon.connections.get(name)
            values = [name, conn.feed.exchange if conn else "", conn.feed.market if conn else ""]
            frames.add_metric(values, c.messages)
            data.add_metric(values, c.data_frames)
            size.add_metric(values, c.bytes)
            connects.add_metric(values, c.connects)
            reconnects.add_metric(values, max(0, c.connects - 1))
            disconnects.add_metric(values, c.disconnects)
            pongs.add_metric(values, c.pongs)
            unknown.add_metric(values, c.unknown_control)
            rejected.add_metric(values, len(c.rejected))
            streaming.add_metric(values, 1 if c.state == "streaming" else 0)
            if c.last_message_at is not None:
                age.add_metric(values, max(0, now - c.last_message_at) / 1e6)
        yield from (frames, data, size, connects, reconnects, disconnects, pongs, unknown, rejected)
        yield from (streaming, age)

    def _children(self) -> dict[str, Any]:
        return {c.name: c for c in self._ctx.daemon.supervisor.statistics().children}

    def _decoders(self) -> Iterator[Metric]:
        normalizer = self._children().get("normalizer")
        stats = getattr(normalizer, "actor", None)
        feeds = getattr(stats, "feeds", None) or {}
        labels = ["connection"]
        families = {
            "frames": CounterMetricFamily("marketflow_decoder_frames", "Frames decoded", labels=labels),
            "trades": CounterMetricFamily("marketflow_decoder_trades", "Trades decoded", labels=labels),
            "book_updates": CounterMetricFamily(
                "marketflow_decoder_book_updates", "Book updates decoded", labels=labels
            ),
            "duplicates": CounterMetricFamily(
                "marketflow_decoder_duplicates", "Trades dropped as already seen", labels=labels
            ),
            "malformed": CounterMetricFamily(
                "marketflow_decoder_parse_errors", "Malformed frames", labels=labels
            ),
            "unknown_topics": CounterMetricFamily(
                "marketflow_decoder_unknown_topics", "Frames of topics not subscribed", labels=labels
            ),
        }
        for name, decoder in feeds.items():
            for field, family in families.items():
                family.add_metric([name], _num(getattr(decoder, field, 0)))
        yield from families.values()

    def _actors(self) -> Iterator[Metric]:
        labels = ["actor"]
        restarts = CounterMetricFamily(
            "marketflow_actor_restarts", "Restarts by the supervisor", labels=labels
        )
        failures = CounterMetricFamily("marketflow_actor_failures", "Failures of the actor", labels=labels)
        up = GaugeMetricFamily("marketflow_actor_running", "1 while the actor runs", labels=labels)
        circuit = GaugeMetricFamily(
            "marketflow_actor_circuit_open", "1 while the actor's circuit is not closed", labels=labels
        )
        for name, child in self._children().items():
            restarts.add_metric([name], child.restarts)
            failures.add_metric([name], child.failures)
            up.add_metric([name], 1 if child.state == "running" else 0)
            circuit.add_metric([name], 0 if child.circuit == "closed" else 1)
        health = GaugeMetricFamily(
            "marketflow_health", "1 for the daemon's current health status", labels=["status"]
        )
        current = self._ctx.daemon.health().status
        for value in ("healthy", "degraded", "unhealthy"):
            health.add_metric([value], 1 if value == current else 0)
        yield from (restarts, failures, up, circuit, health)

    def _buses(self) -> Iterator[Metric]:
        labels = ["bus", "subscriber"]
        depth = GaugeMetricFamily(
            "marketflow_bus_queue_depth", "Batches queued for the subscriber", labels=labels
        )
        capacity = GaugeMetricFamily(
            "marketflow_bus_queue_capacity", "Batches the queue holds", labels=labels
        )
        dropped = CounterMetricFamily(
            "marketflow_bus_dropped_batches", "Batches dropped (drop_oldest)", labels=labels
        )
        dropped_items = CounterMetricFamily(
            "marketflow_bus_dropped_items", "Items dropped (drop_oldest)", labels=labels
        )
        published = CounterMetricFamily("marketflow_bus_published_items", "Items published", labels=["bus"])
        daemon = self._ctx.daemon
        for bus in (daemon.raw_bus, daemon.trade_bus, daemon.book_bus):
            stats = bus.statistics()
            published.add_metric([stats.name], stats.published_items)
            for sub in stats.subscribers:
                values = [stats.name, sub.name]
                depth.add_metric(values, sub.queued_batches)
                capacity.add_metric(values, sub.capacity)
                dropped.add_metric(values, sub.dropped_batches)
                dropped_items.add_metric(values, sub.dropped_items)
        yield from (depth, capacity, dropped, dropped_items, published)

    def _storage(self) -> Iterator[Metric]:
        child = self._children().get("storage")
        stats = getattr(child, "actor", None)
        if stats is None:
            return
        engine = [str(getattr(stats, "engine", ""))]
        labels = ["engine"]
        for name, help_text, field in (
            ("marketflow_storage_rows_received", "Trades received by the writer", "rows_received"),
            ("marketflow_storage_rows_written", "Trades written (new rows)", "rows_written"),
            ("marketflow_storage_duplicates", "Trades already stored", "duplicates"),
            ("marketflow_storage_batches", "Transactions committed", "batches"),
            ("marketflow_storage_errors", "Failed database operations", "errors"),
            ("marketflow_storage_spooled_total", "Trades ever spooled to disk", "spooled_total"),
            ("marketflow_storage_replayed", "Trades replayed from the spool", "replayed"),
            ("marketflow_storage_pruned", "Trades deleted by retention", "pruned"),
            ("marketflow_storage_spool_errors", "Failed spool writes and removals", "spool_errors"),
        ):
            family = CounterMetricFamily(name, help_text, labels=labels)
            family.add_metric(engine, _num(getattr(stats, field, 0)))
            yield family
        for name, help_text, field, scale in (
            ("marketflow_storage_buffered", "Trades in memory, not yet committed", "buffered", 1.0),
            ("marketflow_storage_spooled", "Trades on disk, not yet committed", "spooled", 1.0),
            (
                "marketflow_storage_spool_failing",
                "1 while the spool refuses writes (disk full): trades wait in memory, then the bus backs up",
                "spool_failing",
                1.0,
            ),
            ("marketflow_storage_lag_seconds", "Age of the oldest uncommitted trade", "lag_ms", 1e-3),
            (
                "marketflow_storage_batch_latency_seconds",
                "Duration of the last committed batch",
                "last_batch_ms",
                1e-3,
            ),
        ):
            gauge = GaugeMetricFamily(name, help_text, labels=labels)
            gauge.add_metric(engine, _num(getattr(stats, field, 0)) * scale)
            yield gauge

    def _sinks(self) -> Iterator[Metric]:
        """The record queues (candles, gaps, derivatives, liquidations, quotes, NATS candles): memory,
        the disk spill past half of `storage.record_buffer_max`, and what was lost (disk full too)."""
        labels = ["sink"]
        counters = (
            ("marketflow_sink_written", "Records written (or published)", "written"),
            ("marketflow_sink_errors", "Failed writes (retried)", "errors"),
            ("marketflow_sink_dropped", "Records lost past the memory bound (the spill failing)", "dropped"),
            ("marketflow_sink_spooled_total", "Records ever spilled to disk", "spooled_total"),
            ("marketflow_sink_spill_errors", "Failed spill writes and reads", "spill_errors"),
        )
        gauges = (
            ("marketflow_sink_queued", "Records in memory, not yet written", "queued"),
            ("marketflow_sink_spooled", "Records spilled to disk, not yet written", "spooled"),
            (
                "marketflow_sink_disk_full",
                "1 while the spill has no room (oldest records dropped)",
                "disk_full",
            ),
        )
        families: list[CounterMetricFamily | GaugeMetricFamily] = [
            CounterMetricFamily(n, h, labels=labels) for n, h, _ in counters
        ]
        families += [GaugeMetricFamily(n, h, labels=labels) for n, h, _ in gauges]
        fields = [f for _, _, f in (*counters, *gauges)]
        for queue in self._ctx.daemon.record_queues():
            stats = queue.statistics()
            for family, field in zip(families, fields, strict=True):
                family.add_metric([stats.name], _num(getattr(stats, field)))
        yield from families

    def _capture(self) -> Iterator[Metric]:
        capture = getattr(self._ctx.daemon, "capture", None)
        if capture is None:
            return
        stats = capture.statistics()
        for name, help_text, value in (
            ("marketflow_capture_frames", "Frames written to capture files", stats.frames),
            ("marketflow_capture_dropped", "Frames not captured (the writer fell behind)", stats.dropped),
            ("marketflow_capture_bytes", "Bytes captured, uncompressed", stats.bytes_in),
            ("marketflow_capture_files", "Capture files opened", stats.files_opened),
            ("marketflow_capture_files_deleted", "Capture files deleted by retention", stats.files_deleted),
        ):
            family = CounterMetricFamily(name, help_text)
            family.add_metric([], value)
            yield family
        queued = GaugeMetricFamily("marketflow_capture_queued", "Socket reads waiting for the capture writer")
        queued.add_metric([], stats.queued)
        yield queued

    def _archive(self) -> Iterator[Metric]:
        """The `[archive] after_days` job, when it runs (its statistics, read like `health()` does)."""
        archiver: Any = self._ctx.daemon.actors.get("archive")
        if archiver is None:
            return
        stats = archiver.statistics()
        for name, help_text, value in (
            ("runs", "Archiving passes started", stats.runs),
            ("failed_runs", "Archiving passes that left a partition in the database", stats.failed_runs),
            ("errors", "Partitions (or listings) the archiving job failed on", stats.errors),
            ("partitions", "Partitions (market-days) moved into the archive", stats.partitions),
            ("rows", "Trades moved from the database into the archive", stats.trades_moved),
            (
                "files_written",
                "Partition files written (a resumed run may find its file done)",
                stats.files_written,
            ),
            ("bytes_written", "Bytes of the partition files written", stats.bytes_written),
        ):
            family = CounterMetricFamily(f"marketflow_archive_{name}", help_text)
            family.add_metric([], value)
            yield family
        failing = GaugeMetricFamily(
            "marketflow_archive_failing",
            "1 while the last archiving pass left a partition in the database (disk full, database down)",
        )
        failing.add_metric([], 1 if stats.failing else 0)
        yield failing
        for name, help_text, us in (
            ("last_run", "End of the last archiving pass (Unix time)", stats.last_run_us),
            (
                "last_success",
                "End of the last archiving pass that failed nowhere (Unix time)",
                stats.last_success_us,
            ),
        ):
            if us is not None:
                gauge = GaugeMetricFamily(f"marketflow_archive_{name}_timestamp_seconds", help_text)
                gauge.add_metric([], us / 1e6)
                yield gauge

    def _books(self) -> Iterator[Metric]:
        labels = ["book"]
        gaps = CounterMetricFamily("marketflow_book_gaps", "Sequence gaps and crossed books", labels=labels)
        resyncs = CounterMetricFamily(
            "marketflow_book_resyncs", "Books synced again after a gap", labels=labels
        )
        synced = GaugeMetricFamily("marketflow_book_synced", "1 while the book may be served", labels=labels)
        for key, stats in self._ctx.daemon.books.statistics().books.items():
            gaps.add_metric([key], stats.gaps)
            resyncs.add_metric([key], stats.resyncs)
            synced.add_metric([key], 1 if str(stats.state) == "synced" else 0)
        ledger = self._ctx.daemon.ledger.statistics()
        recorded = GaugeMetricFamily("marketflow_gaps_recorded", "Gap records held by the ledger")
        recorded.add_metric([], ledger.records)
        open_gaps = GaugeMetricFamily("marketflow_gaps_open", "Gaps not yet closed")
        open_gaps.add_metric([], ledger.open)
        by_channel: dict[tuple[str, str, str], int] = {}
        for record in self._ctx.daemon.ledger.query():
            market = (record.exchange, record.symbol, record.channel)
            by_channel[market] = by_channel.get(market, 0) + 1
        per_market = GaugeMetricFamily(
            "marketflow_gaps",
            "Gap records held, per market and channel",
            labels=["exchange", "symbol", "channel"],
        )
        for (exchange, symbol, channel), count in sorted(by_channel.items()):
            per_market.add_metric([exchange, symbol, channel], count)
        yield from (gaps, resyncs, synced, recorded, open_gaps, per_market)

    def _heap(self) -> Iterator[Metric]:
        heap = self._ctx.daemon.heap
        trims = CounterMetricFamily("marketflow_heap_trims", "Times freed heap pages were given back")
        trims.add_metric([], heap.trims)
        released = CounterMetricFamily(
            "marketflow_heap_released_bytes",
            "Resident memory given back by those trims (RSS before less after)",
        )
        released.add_metric([], heap.released_bytes)
        yield from (trims, released)

    def _limits(self) -> Iterator[Metric]:
        gate = self._ctx.storage_gate.statistics()
        for name, help_text, value, kind in (
            ("running", "Queries of stored trades computing now", gate.running, GaugeMetricFamily),
            ("waiting", "Queries of stored trades waiting for a slot", gate.waiting, GaugeMetricFamily),
            ("refused", "Queries of stored trades refused: slots and queue full", gate.refused, None),
            ("timed_out", "Queries of stored trades cut at http.query_timeout_s", gate.timed_out, None),
        ):
            family = (kind or CounterMetricFamily)(f"marketflow_storage_queries_{name}", help_text)
            family.add_metric([], value)
            yield family
        server = getattr(self._ctx.daemon, "http", None)
        stats = getattr(server.statistics(), "connections", None) if server is not None else None
        if stats is not None:
            for name, help_text, value, kind in (
                ("connections", "Open HTTP connections", stats.open, GaugeMetricFamily),
                ("connections_limit", "Most open HTTP connections", stats.limit, GaugeMetricFamily),
                ("accept_errors", "Accepts failed for want of descriptors", stats.accept_errors, None),
            ):
                family = (kind or CounterMetricFamily)(f"marketflow_http_{name}", help_text)
                family.add_metric([], value)
                yield family

    def _lag(self) -> Iterator[Metric]:
        ring = self._ctx.ring
        family = HistogramMetricFamily(
            "marketflow_trade_receive_lag_seconds",
            "Exchange trade time to local receipt",
            labels=["exchange"],
        )
        if ring is not None:
            for exchange, lag in ring.statistics().lag.items():
                cumulative = 0
                buckets: list[tuple[str, float]] = []
                for bound, count in zip((*lag.buckets, float("inf")), lag.counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                family.add_metric([exchange], buckets, lag.sum_s)
            stats = ring.statistics()
            held = GaugeMetricFamily("marketflow_ring_trades", "Trades held by the trade ring")
            held.add_metric([], stats.held)
            yield held
        yield family


def make_registry(ctx: QueryContext) -> CollectorRegistry:
    """A registry of its own (not the global one): the daemon's collector and the process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(ctx))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of `registry`."""
    return generate_latest(registry)


# -- status -----------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if attrs.has(type(value)):
        return {k: _jsonable(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return format(value, "f")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _queues(ctx: QueryContext) -> dict[str, list[dict[str, Any]]]:
    daemon = ctx.daemon
    queues: dict[str, list[dict[str, Any]]] = {}
    for bus in (daemon.raw_bus, daemon.trade_bus, daemon.book_bus):
        for sub in bus.statistics().subscribers:
            queues.setdefault(sub.name, []).append(
                {
                    "bus": bus.name,
                    "queued_batches": sub.queued_batches,
                    "capacity": sub.capacity,
                    "overflow": str(sub.overflow),
                    "dropped_batches": sub.dropped_batches,
                    "dropped_items": sub.dropped_items,
                }
            )
    return queues


def _actors(ctx: QueryContext) -> list[dict[str, Any]]:
    daemon = ctx.daemon
    now_trio = trio.current_time()
    now = now_us()
    queues = _queues(ctx)
    actors: list[dict[str, Any]] = []
    for child in daemon.supervisor.statistics().children:
        entry: dict[str, Any] = {
            "name": child.name,
            "state": child.state,
            "restarts": child.restarts,
            "failures": child.failures,
            "circuit": child.circuit,
            "last_error": child.last_error,
            "uptime_s": None if child.started_at is None else round(now_trio - child.started_at, 3),
            "queue": queues.get(child.name, []),
        }
        counters = daemon.feed_counters.get(child.name)
        if counters is not None:
            conn = daemon.connections.get(child.name)
            last = counters.last_message_at
            entry["feed"] = {
                "exchange": None if conn is None else conn.feed.exchange,
                "market": None if conn is None else conn.feed.market,
                "state": counters.state,
                "msgs_per_s": ctx.rates.rate(child.name),
                "last_message_age_s": None if last is None else round(max(0, now - last) / 1e6, 3),
                "messages": counters.messages,
                "data_frames": counters.data_frames,
                "bytes": counters.bytes,
                "connects": counters.connects,
                "disconnects": counters.disconnects,
                "pongs": counters.pongs,
                "subscribed": list(counters.subscribed),
                "rejected": dict(counters.rejected),
                "last_error": counters.last_error,
            }
        if child.actor is not None and counters is None:
            entry["statistics"] = _jsonable(child.actor)
        actors.append(entry)
    return actors


def status(ctx: QueryContext, name: str | None = None) -> dict[str, Any]:
    """`/collectors/status`: every actor (`{"actors": [...]}`), or one actor's entry by name."""
    from marketflow.api.queries import QueryError  # queries re-exports this module's queries

    actors = _actors(ctx)
    if name is None:
        return {"status": ctx.daemon.health().status, "actors": actors}
    for actor in actors:
        if actor["name"] == name:
            return actor
    raise QueryError(
        "not_found",
        f"no actor named {name[:60]!r} (actors: {', '.join(a['name'] for a in actors)})",
        "name",
        404,
    )


def storage_stats(ctx: QueryContext) -> dict[str, Any]:
    """`/collectors/storage/stats`: the storage writer's statistics and its supervisor state."""
    child = next((c for c in ctx.daemon.supervisor.statistics().children if c.name == "storage"), None)
    stats: dict[str, Any] = {
        "engine": ctx.daemon.store.engine_name,
        "url": ctx.daemon.store.display_url,
        "state": "absent" if child is None else child.state,
        "restarts": 0 if child is None else child.restarts,
    }
    if child is not None and child.actor is not None:
        writer = _jsonable(child.actor)
        if isinstance(writer, dict):
            writer.pop("name", None)
            writer["writer_state"] = writer.pop("state", None)
            stats.update(writer)
    return stats


def system_info(ctx: QueryContext) -> dict[str, Any]:
    """Name, version, uptime, configuration source, storage and what the daemon collects."""
    daemon = ctx.daemon
    return {
        "name": "marketflow",
        "version": __version__,
        "python": platform.python_version(),
        "started_at": us_to_iso(ctx.started_at),
        "uptime_s": round((now_us() - ctx.started_at) / 1e6, 3),
        "config": daemon.config.source,
        "storage": daemon.store.display_url,
        "http_listen": daemon.config.http.listen,
        "health": daemon.health().status,
        "feeds": [feed.name for feed in daemon.config.feeds],
        "markets": sum(len(feed.symbols) for feed in daemon.config.feeds),
        "analytics": {
            "candle_intervals": list(daemon.config.analytics.candle_intervals),
            "value_area": format(daemon.config.analytics.value_area, "f"),
            "large_trade_notional": format(daemon.config.analytics.large_trade_notional, "f"),
            "live": ctx.analytics is not None,
        },
    }
