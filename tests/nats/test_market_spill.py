"""A collector's market rows through a NATS outage longer than its memory, stopped in the middle of it: the
rows past half of `storage.record_buffer_max` spill to `<state_dir>/spool/records/<kind>/` (while the
publish hangs, too), the stop spills the rest, and the restarted collector publishes them first — every
liquidation stored once, none dropped."""

from __future__ import annotations

from pathlib import Path

import attrs
import trio

from marketflow.config import Config
from marketflow.daemon import Daemon
from marketflow.model import Liquidation, MarketData
from marketflow.nats.server import NatsServer
from marketflow.sim import SimConfig, SimServer
from marketflow.storage.spool import SUFFIX, read_records
from tests.nats.conftest import with_nats
from tests.nats.test_market import market_config, rows, tap
from tests.nats.test_market_faults import LIQUIDATIONS_SQL, liquidations_of
from tests.test_pg_end_to_end import wait_until

RECORDS_MAX = 10  # memory: 5 rows of a kind, then they spill


def small_memory(config: Config) -> Config:
    return attrs.evolve(config, storage=attrs.evolve(config.storage, record_buffer_max=RECORDS_MAX))


async def test_a_collector_restarted_while_nats_is_down_publishes_every_spilled_row_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    sim = SimServer(SimConfig(seed=12, rate=20, book_rate=40))
    records: list[MarketData] = []
    store_db = tmp_path / "store" / "marketflow.db"
    with trio.fail_after(150):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            store = Daemon(with_nats(market_config(tmp_path / "store", sim), [nats_server], ("store",)))
            config = small_memory(
                with_nats(market_config(tmp_path / "collect", sim), [nats_server], ("collect",))
            )
            spill_dir = Path(config.daemon.state_dir) / "spool" / "records" / "liquidations"
            collect = Daemon(config)
            await nursery.start(store.run)
            nursery.start_soon(tap, collect, records)
            await nursery.start(collect.run)
            await wait_until(lambda: len(rows(store_db, LIQUIDATIONS_SQL)) >= 2, interval=0.1)
            nats_server.kill()
            try:
                queue = collect.market.liquidations
                await wait_until(lambda: collect.actors["nats_market"].statistics().state == "retrying")
                await wait_until(lambda: queue.statistics().spooled >= 2 * RECORDS_MAX)
                await collect.stop()  # the rows still in memory go to the spill too
                stats = queue.statistics()
                assert stats.queued == 0 and stats.dropped == 0 and stats.spooled >= 2 * RECORDS_MAX
                on_disk = read_records(spill_dir, Liquidation)
                assert sum(map(len, on_disk)) == stats.spooled  # what the restart finds
            finally:
                nats_server.start()
            await nats_server.wait_ready()
            restarted = Daemon(config)  # the same state_dir: it finds the spill and publishes it first
            nursery.start_soon(tap, restarted, records)
            await nursery.start(restarted.run)
            again = restarted.market.liquidations
            await wait_until(lambda: again.written >= stats.spooled and not again.spooled, interval=0.1)
            await restarted.stop()
            sent = liquidations_of(records)
            await wait_until(lambda: len(rows(store_db, LIQUIDATIONS_SQL)) >= len(sent), interval=0.1)
            await store.stop()
            nursery.cancel_scope.cancel()
    stored = rows(store_db, LIQUIDATIONS_SQL)
    assert len(stored) == len(sent) and {r[:3] for r in stored} == sent  # each once, none lost
    assert {(r.exchange, r.symbol, r.id) for batch in on_disk for r in batch} <= sent
    assert again.statistics().dropped == 0 and not any(spill_dir.glob("*" + SUFFIX))
    assert restarted.market.derivatives.statistics().dropped == 0  # quotes come in bursts: not here
