"""A normalizer cancelled while it hands a decoded batch over still delivers that batch.

Its frames are already off the raw bus and its decoders have moved past their ids, so a batch dropped at
that point would be lost with no gap to show for it (found by `test_daemon_restarts` under load).
"""

from __future__ import annotations

from decimal import Decimal

import trio

from marketflow.exchanges import VENUES
from marketflow.model import RawFrames, Trade
from marketflow.pipeline.normalizer import Normalizer
from marketflow.runtime.bus import Bus, Overflow

FRAME = (
    b'{"topic":"publicTrade.BTCUSDT","ts":1789875217841,"type":"snapshot","data":[{"BT":false,"RPI":false,'
    b'"S":"Sell","T":1789875217840,"i":"2290000001211680903","p":"80413.3","s":"BTCUSDT",'
    b'"seq":114263055846,"v":"0.06"}]}'
)


async def test_a_cancel_during_the_hand_off_waits_until_the_batch_is_delivered(
    autojump_clock: trio.abc.Clock,
) -> None:
    raw: Bus[RawFrames] = Bus("raw")
    raw_sub = raw.subscribe("normalizer", 8, Overflow.BLOCK)
    trades: Bus[Trade] = Bus("trades")
    storage = trades.subscribe("storage", 1, Overflow.BLOCK)
    decoder = VENUES["bybit"].decoder("spot", {"BTCUSDT": "BTC-USDT"})
    normalizer = Normalizer(raw_sub, trades, {"bybit-spot": decoder})
    with trio.fail_after(60):  # virtual seconds: a lost batch fails here instead of hanging
        await _cancel_mid_hand_off(raw, trades, normalizer, storage.receiver())


async def _cancel_mid_hand_off(
    raw: Bus[RawFrames],
    trades: Bus[Trade],
    normalizer: Normalizer,
    receiver: trio.MemoryReceiveChannel[list[Trade]],
) -> None:
    async with trio.open_nursery() as nursery:
        actor = trio.CancelScope()
        nursery.start_soon(_run, normalizer, actor)
        # Storage is full: the normalizer blocks handing its batch over when the supervisor cancels it.
        await _fill(trades)
        await raw.publish([RawFrames("bybit-spot", "bybit", "spot", 1, [FRAME])])
        await trio.sleep(1)
        actor.cancel()
        await trio.sleep(1)
        first = await receiver.receive()  # the filler
        assert [t.id for t in first] == ["filler"]
        delivered = await receiver.receive()
        assert [(t.id, str(t.price)) for t in delivered] == [("2290000001211680903", "80413.3")]
        nursery.cancel_scope.cancel()


async def _run(normalizer: Normalizer, scope: trio.CancelScope) -> None:
    with scope:
        await normalizer.run()


async def _fill(trades: Bus[Trade]) -> None:
    filler = Trade("bybit", "BTC-USDT", "filler", Decimal(1), Decimal(1), "buy", 1, 1)
    await trades.publish([filler])


async def test_a_hand_off_waiting_on_a_reader_that_is_gone_ends_when_the_bus_closes(
    autojump_clock: trio.abc.Clock,
) -> None:
    """What `Daemon` does when its shutdown deadline passed: close the buses so the shielded wait ends."""
    raw: Bus[RawFrames] = Bus("raw")
    trades: Bus[Trade] = Bus("trades")
    trades.subscribe("storage", 1, Overflow.BLOCK)  # never read again
    decoder = VENUES["bybit"].decoder("spot", {"BTCUSDT": "BTC-USDT"})
    normalizer = Normalizer(raw.subscribe("normalizer", 8, Overflow.BLOCK), trades, {"bybit-spot": decoder})
    actor = trio.CancelScope()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run, normalizer, actor)
            await _fill(trades)
            await raw.publish([RawFrames("bybit-spot", "bybit", "spot", 1, [FRAME])])
            await trio.sleep(1)
            actor.cancel()
            await trio.sleep(1)
            assert normalizer.statistics().trades == 1  # decoded, still waiting to hand it over
            trades.close()
    assert trio.current_time() < 60
