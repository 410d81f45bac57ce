"""Live normalized market data from a marketflow NATS cluster, for your own code (SPEC §13).

    async with subscribe(["nats://10.0.0.1:4222"], "trades", "bybit", "BTC-USDT") as feed:
        async for trade in feed:          # marketflow.model.Trade: exact Decimal price and amount
            ...

Works the same under asyncio and trio (under trio nats-py runs on its own asyncio thread). `exchange` and
`symbol` may be `*` (any). `deliver`: "new" (from now on, the default), "all" (everything the stream
still holds, then live) or "last" (the newest message of every matching subject, then live; what a book
view wants). Records: `Trade` for `trades`, a snapshot `BookUpdate` (the whole book) for `book`,
`TickerUpdate` (the merged `Ticker` and its quote changes) for `ticker`, `DerivativesUpdate` (the merged
state and its samples) for `derivatives`, `Liquidation` for `liquidations`, `Candle` for `candles`. The
payloads are documented in docs/NATS.md for readers in other languages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Literal

import sniffio
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from marketflow.analytics.candles import Candle
from marketflow.config import NatsConfig
from marketflow.model import BookUpdate, Liquidation, Trade
from marketflow.nats.link import Inbox, NatsLink
from marketflow.nats.market_schema import (
    DerivativesUpdate,
    TickerUpdate,
    unpack_candles,
    unpack_derivatives,
    unpack_liquidations,
    unpack_ticker,
)
from marketflow.nats.schema import KINDS, stream_of, unpack_book, unpack_trades

Deliver = Literal["new", "all", "last"]
Record = Trade | BookUpdate | TickerUpdate | DerivativesUpdate | Liquidation | Candle
_POLICIES = {"new": DeliverPolicy.NEW, "all": DeliverPolicy.ALL, "last": DeliverPolicy.LAST_PER_SUBJECT}


class MarketFeed:
    """An async iterator of records from one subject pattern; made by `subscribe`."""

    def __init__(self, kind: str, take: _Take) -> None:
        self._kind = kind
        self._take = take
        self._pending: list[Record] = []

    def __aiter__(self) -> MarketFeed:
        return self

    async def __anext__(self) -> Record:
        while not self._pending:
            for msg in await self._take():
                self._pending.extend(decode(self._kind, msg.data))
        return self._pending.pop(0)


def decode(kind: str, payload: bytes) -> list[Record]:
    """The records of one message of `kind` (raises `schema.PayloadError` for a malformed one)."""
    if kind == "trades":
        return list(unpack_trades(payload))
    if kind == "book":
        return [unpack_book(payload)]
    if kind == "ticker":
        return [unpack_ticker(payload)]
    if kind == "derivatives":
        return [unpack_derivatives(payload)]
    if kind == "liquidations":
        return list(unpack_liquidations(payload))
    return list(unpack_candles(payload))


class _Take:
    """Waits for the next messages, on whichever event loop the caller runs."""

    def __init__(self, inbox: Inbox, link: NatsLink | None) -> None:
        self.inbox = inbox
        self.link = link

    async def __call__(self) -> list[Msg]:
        if self.link is None:
            return await self.inbox.take(512)
        return await self.link.take(self.inbox, 512)


def subject_of(prefix: str, kind: str, exchange: str, symbol: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    return f"{prefix}.{kind}.{exchange}.{symbol}"


@asynccontextmanager
async def subscribe(
    servers: Sequence[str],
    kind: str,
    exchange: str = "*",
    symbol: str = "*",
    *,
    prefix: str = "marketflow",
    deliver: Deliver = "new",
) -> AsyncIterator[MarketFeed]:
    """Subscribe to `<prefix>.<kind>.<exchange>.<symbol>` (an ordered consumer: in order, no gaps)."""
    subject = subject_of(prefix, kind, exchange, symbol)
    if deliver not in _POLICIES:
        raise ValueError(f"deliver must be one of {', '.join(_POLICIES)}, got {deliver!r}")
    if sniffio.current_async_library() == "trio":
        link = NatsLink(NatsConfig(servers=tuple(servers), subject_prefix=prefix), "client")
        try:
            await link.open(create_streams=False)
            inbox = await link.subscribe(kind, subject, deliver=_POLICIES[deliver], block=True)
            yield MarketFeed(kind, _Take(inbox, link))
        finally:
            await link.close()
        return
    import nats

    nc = await nats.connect(list(servers), name="marketflow-client", max_reconnect_attempts=-1)
    try:
        inbox = Inbox(block=True)
        await nc.jetstream().subscribe(
            subject,
            stream=stream_of(prefix, kind),
            cb=inbox.put,
            ordered_consumer=True,
            deliver_policy=_POLICIES[deliver],
        )
        yield MarketFeed(kind, _Take(inbox, None))
    finally:
        await asyncio.shield(nc.close())
