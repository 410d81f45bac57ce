"""The daemon's health (for /health, systemd's watchdog and STATUS=) and its statistics."""

from __future__ import annotations

from typing import Any

import attrs

from marketflow.daemon_state import DaemonState
from marketflow.runtime.sink import RecordQueue


@attrs.frozen
class Health:
    status: str  # healthy | degraded | unhealthy
    problems: dict[str, str]


class HealthReport(DaemonState):
    """The part of `Daemon` that says how it is doing."""

    def health(self) -> Health:
        """healthy; degraded when a circuit is open, a feed is down, a book is resyncing, the spool
        refuses writes (disk full), a NATS actor retries or the archive job's last pass failed; unhealthy
        when storage is not running."""
        children = {c.name: c for c in self.supervisor.statistics().children}
        problems: dict[str, str] = {}
        storage = children.get("storage")
        if storage is None or storage.state != "running":
            problems["storage"] = "not running" if storage is None else storage.state
        writer = self.writer.statistics() if self.writer is not None else None
        if writer is not None and writer.spool_failing:  # disk full: trades wait in memory, then back up
            problems["spool"] = f"{writer.state}: {writer.spool_error}"
        for queue in self.record_queues():  # disk full: records wait in memory, then the oldest are lost
            if queue.spill_failing:
                kind = "disk_full" if queue.disk_full else "spill_failing"
                problems[f"spill {queue.name}"] = f"{kind}: {queue.spill_error}"
        for name in self.connections if self._collect else ():
            child = children.get(name)
            if child is not None and child.circuit != "closed":
                problems[name] = f"circuit {child.circuit}"
            elif self.feed_counters[name].state != "streaming":
                problems[name] = self.feed_counters[name].state
        for name in (
            "nats_trades",
            "nats_store",
            "nats_store_market",
            "nats_serve",
            "nats_books",
            "nats_market",
            "nats_candles",
        ):
            actor_stats = getattr(children.get(name), "actor", None)
            state = getattr(actor_stats, "state", "running")
            if state in ("retrying", "disk_full", "spool_failing"):  # NATS (or the database) does not answer
                problems[name] = f"{state}: {getattr(actor_stats, 'last_error', None)}"
        archiver: Any = self.actors.get("archive")
        if archiver is not None and archiver.failing:  # old trades stay in the database
            problems["archive"] = archiver.statistics().last_error or "failing"
        for key, stats in self.books.statistics().books.items():
            if str(stats.state) != "synced":
                problems[f"book {key}"] = str(stats.state)
        status = "unhealthy" if "storage" in problems else "degraded" if problems else "healthy"
        return Health(status, problems)

    def record_queues(self) -> list[RecordQueue[Any]]:
        """Every queue of records waiting for the database (or NATS), for statistics and health."""
        market = self.market
        queues: list[RecordQueue[Any] | None] = [
            self.ledger.queue,
            self.candle_queue,
            market.derivatives,
            market.liquidations,
            market.quotes,
            self.nats_candles,
            self.snapshot_queue,
        ]
        return [q for q in queues if q is not None and q.accept]

    def summary(self) -> str:
        """One line for systemd's STATUS= and logs."""
        streaming = sum(1 for c in self.feed_counters.values() if c.state == "streaming")
        trades = sum(c.data_frames for c in self.feed_counters.values())
        health = self.health()
        return (
            f"{health.status}; {streaming}/{len(self.feed_counters)} connections streaming; "
            f"{trades} data frames; {len(health.problems)} problems"
        )

    def statistics(self) -> dict[str, Any]:
        return {
            "supervisor": attrs.asdict(self.supervisor.statistics(), recurse=False),
            "buses": [
                *(bus.statistics() for bus in (self.raw_bus, self.trade_bus, self.book_bus)),
                self.market.bus.statistics(),
            ],
        }
