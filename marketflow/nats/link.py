"""One nats-py connection, driven from trio through a dedicated asyncio thread.

nats-py is asyncio-only. Measured here (docs/BENCHMARKING): an asyncio loop in its own thread published
31-33k msgs/s and consumed 28-29k from trio, trio-asyncio 15k and 8k; the thread is also the pattern the
PostgreSQL store uses (`storage/postgres.py`, `AsyncioThread`). Every call below runs on that loop.

Pitfalls handled here: nats-py's `publish_async` never resolves the future of a publish the server refused
(issue #985: `APIError.from_error` raises inside its reply handler, so the error only reaches `error_cb`).
So acks are not taken from `publish_async`: every publish carries a reply subject of this link's own ack
inbox, whose handler parses the server's answer itself (a `PubAck`, or an error with its code), and every
batch of acks is awaited with a timeout (a reply lost with a node). With replicas the server answers 409
"duplicate message id is in process" (err_code 10158) to a second publisher of an id whose first copy is
being replicated: that message is stored, so it counts as done (a duplicate).
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Literal, TypeVar

import attrs
import nats
import nats.errors
import nats.js.errors
import trio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    StorageType,
    StreamConfig,
)

from marketflow.config import NatsConfig
from marketflow.nats.schema import MSG_ID, STREAM_OF, stream_name, stream_of
from marketflow.storage.postgres import AsyncioThread

log = logging.getLogger("marketflow.nats")
T = TypeVar("T")

PUBLISH_TIMEOUT_S: Final = 5.0
"""Longest a batch of publishes waits for its acks (a leader election took ~4 s here)."""
CONNECT_TIMEOUT_S: Final = 2
FIRST_CONNECT_ATTEMPTS: Final = 1
"""Retries per server of a first connect (nats-py's `max_reconnect_attempts`: -1 would retry forever, and a
daemon started while NATS is down would never finish starting); once connected, it reconnects forever."""
DUPLICATE_WINDOW_S: Final = 600.0
"""JetStream drops a message whose id it saw this recently (retries, spool replays)."""
BOOK_MAX_AGE_S: Final = 3600.0
ERR_DUPLICATE_IN_PROCESS: Final = 10158
ERR_STREAM_NAME_IN_USE: Final = 10058
INBOX_CAPACITY: Final = 10_000


class NatsError(Exception):
    """NATS refused or did not answer; the message names the servers and the cause."""


class PublishRefused(Exception):
    """JetStream answered a publish with an error (its `code`, `err_code` and description)."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"code={code} err_code={err_code} {description}")
        self.code = code
        self.err_code = err_code


Ack = Literal["new", "duplicate", "in_process"]


def parse_ack(msg: Msg) -> Ack:
    """JetStream's answer to a publish: stored (`new`), had it already (`duplicate`), or another
    publisher's copy of that id is being stored (`in_process`, the 409 of `ERR_DUPLICATE_IN_PROCESS`);
    raises `PublishRefused` for any other error answer."""
    if msg.headers and msg.headers.get("Status") == "503":
        raise PublishRefused(503, 0, "no responders: no stream takes this subject")
    try:
        answer = json.loads(msg.data)
    except ValueError:
        raise PublishRefused(0, 0, f"unreadable answer {msg.data[:100]!r}") from None
    error = answer.get("error") if isinstance(answer, dict) else None
    if error is not None:
        err_code = int(error.get("err_code", 0))
        if err_code == ERR_DUPLICATE_IN_PROCESS:
            return "in_process"
        raise PublishRefused(int(error.get("code", 0)), err_code, str(error.get("description", "")))
    if not isinstance(answer, dict) or "seq" not in answer:
        raise PublishRefused(0, 0, f"not a publish ack: {msg.data[:100]!r}")
    return "duplicate" if answer.get("duplicate") else "new"


class AckInbox:
    """Answers to this link's JetStream publishes: one wildcard subscription, a future per publish."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}

    def expect(self) -> tuple[str, asyncio.Future[Msg]]:
        """A reply subject and the future its answer resolves."""
        token = str(next(self._tokens))
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        return self.prefix + token, future

    def forget(self, futures: Sequence[asyncio.Future[Msg]]) -> None:
        """Stop waiting for these (answered or given up)."""
        gone = {id(f) for f in futures}
        for token, future in list(self._waiting.items()):
            if id(future) in gone:
                del self._waiting[token]

    async def on_reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self.prefix) :], None)
        if future is not None and not future.done():
            future.set_result(msg)


class Inbox:
    """Messages of one push subscription, queued on the asyncio side until trio takes them."""

    def __init__(self, *, block: bool = False) -> None:
        self.queue: asyncio.Queue[Msg] = asyncio.Queue(INBOX_CAPACITY)
        self.block = block
        self.dropped = 0

    async def put(self, msg: Msg) -> None:
        if self.block:  # a reader that must see everything: the subscription waits (flow control)
            await self.queue.put(msg)
            return
        try:
            self.queue.put_nowait(msg)
        except asyncio.QueueFull:  # a live view that cannot keep up: counted, never blocks the client
            self.dropped += 1

    async def take(self, most: int) -> list[Msg]:
        msgs = [await self.queue.get()]
        while len(msgs) < most and not self.queue.empty():
            msgs.append(self.queue.get_nowait())
        return msgs


@attrs.frozen
class Start:
    """Where a subscription starts in its stream: at stream sequence `seq` if set, else at the first
    message stored at or after `time` (UTC; JetStream compares it with its own clock)."""

    time: datetime.datetime
    seq: int | None = None


class NatsLink:
    """A connection to the configured NATS servers for one actor; `open()` also makes sure the streams
    exist. `run()`-style calls raise `NatsError` for any failure."""

    def __init__(self, config: NatsConfig, name: str) -> None:
        self.config = config
        self.name = name
        self._thread = AsyncioThread(f"nats-{name}")
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._acks: AckInbox | None = None
        self._streams_ready = False
        self._pull: dict[str, JetStreamContext.PullSubscription] = {}
        self.errors = 0
        self.last_error: str | None = None
        self.in_process_duplicates = 0
        """409s "duplicate message id is in process" taken as stored (another publisher's copy is)."""

    @property
    def display(self) -> str:
        return ",".join(self.config.servers)

    def subject_all(self, kind: str) -> str:
        return f"{self.config.subject_prefix}.{kind}.>"

    def subjects_of(self, stream: str) -> list[str]:
        """Every subject of a stream (`schema.STREAM_OF`): `<prefix>.<kind>.>` of each of its kinds."""
        return [self.subject_all(kind) for kind, of in STREAM_OF.items() if of == stream]

    async def _run(self, doing: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await self._thread.run(_unless_cancelled, fn, *args)
        except Exception as exc:  # nats-py, asyncio and socket errors alike: one error type for the actors
            raise NatsError(f"NATS {self.display}: {doing} failed: {type(exc).__name__}: {exc}") from exc

    async def open(self, *, create_streams: bool = True) -> None:
        """Connect (a bounded attempt: `FIRST_CONNECT_ATTEMPTS`) and create the streams if missing (until
        that succeeded once: a server just started may take a connection before JetStream answers)."""
        self._thread.start()
        await self._run("connect", self._connect, create_streams)

    async def _connect(self, create_streams: bool) -> None:
        # Connected, or reconnecting on its own: a second client would leak (and wait meanwhile).
        if self._nc is None or self._nc.is_closed:
            await self._dial()
        if create_streams and not self._streams_ready:
            assert self._js is not None
            await self._ensure_streams(self._js)
            self._streams_ready = True

    async def _dial(self) -> None:
        async def on_error(exc: Exception) -> None:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"

        self._nc = await nats.connect(
            list(self.config.servers),
            name=f"marketflow-{self.name}",
            connect_timeout=CONNECT_TIMEOUT_S,
            reconnect_time_wait=0.25,
            max_reconnect_attempts=FIRST_CONNECT_ATTEMPTS,
            allow_reconnect=True,
            error_cb=on_error,
        )
        # Connected: from now on an outage is waited out (nats-py reads this option at each reconnect).
        self._nc.options["max_reconnect_attempts"] = -1
        self._js = self._nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
        self._acks = AckInbox(self._nc.new_inbox() + ".")
        await self._nc.subscribe(self._acks.prefix + "*", cb=self._acks.on_reply)

    async def _ensure_streams(self, js: JetStreamContext) -> None:
        prefix = self.config.subject_prefix

        def kept(kind: str, subjects: list[str]) -> StreamConfig:
            """A stream kept like trades: on file for `max_age`, ids deduplicated within the window."""
            return StreamConfig(
                name=stream_name(prefix, kind),
                subjects=subjects,
                max_age=float(self.config.max_age_s),
                num_replicas=self.config.stream_replicas,
                duplicate_window=min(DUPLICATE_WINDOW_S, float(self.config.max_age_s)),
                storage=StorageType.FILE,
                discard=DiscardPolicy.OLD,
            )

        streams = (
            kept("trades", [self.subject_all("trades")]),
            # Only the newest book of a symbol matters: a serving daemon starts from it.
            StreamConfig(
                name=stream_name(prefix, "book"),
                subjects=[self.subject_all("book")],
                max_msgs_per_subject=1,
                max_age=BOOK_MAX_AGE_S,
                num_replicas=self.config.stream_replicas,
                storage=StorageType.MEMORY,
                discard=DiscardPolicy.OLD,
            ),
            # Tickers, derivatives and liquidations: what the store role writes, kept like trades.
            kept("market", self.subjects_of("market")),
            kept("candles", self.subjects_of("candles")),
        )
        for config in streams:
            assert config.name is not None
            try:
                await js.stream_info(config.name)
                continue
            except nats.js.errors.NotFoundError:
                pass
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != ERR_STREAM_NAME_IN_USE:  # another daemon made it meanwhile
                    raise

    async def close(self) -> None:
        if self._thread.running:
            try:
                await self._thread.run(self._close)
            except Exception as exc:  # closing a broken connection: nothing left to save
                log.debug("closing the NATS connection failed", extra={"error": repr(exc)})
        await _stop_thread(self._thread)

    async def _close(self) -> None:
        nc, self._nc, self._js, self._acks = self._nc, None, None, None
        self._streams_ready = False
        self._pull = {}
        if nc is not None and not nc.is_closed:
            await asyncio.wait_for(nc.close(), PUBLISH_TIMEOUT_S)

    async def stream_count(self, kind: str, subject: str) -> int:
        """How many messages the stream of `kind` holds on `subject` (wildcards allowed)."""
        return await self._run("stream info", self._stream_count, kind, subject)

    async def _stream_count(self, kind: str, subject: str) -> int:
        js = self._js
        if js is None:
            raise nats.errors.ConnectionClosedError
        info = await js.stream_info(stream_of(self.config.subject_prefix, kind), subjects_filter=subject)
        return sum((info.state.subjects or {}).values())

    # -- publishing ------------------------------------------------------------------------------------------

    async def publish_acked(self, messages: Sequence[tuple[str, bytes, str]]) -> list[bool]:
        """Publish `(subject, payload, msg id)` to JetStream and wait for every ack; per message, whether
        JetStream had it already (a duplicate). Raises `NatsError` if any is not acked in time."""
        return await self._run("publish", self._publish_acked, messages)

    async def _publish_acked(self, messages: Sequence[tuple[str, bytes, str]]) -> list[bool]:
        nc, acks = self._nc, self._acks
        if nc is None or acks is None:
            raise nats.errors.ConnectionClosedError
        futures = []
        try:
            for subject, payload, msg_id in messages:
                reply, future = acks.expect()
                futures.append(future)
                await nc.publish(subject, payload, reply=reply, headers={MSG_ID: msg_id})
            _, pending = await asyncio.wait(futures, timeout=PUBLISH_TIMEOUT_S) if futures else ((), ())
        finally:
            acks.forget(futures)
        if pending:
            raise TimeoutError(f"{len(pending)} of {len(futures)} publishes not acked in time")
        answers = [parse_ack(future.result()) for future in futures]
        self.in_process_duplicates += answers.count("in_process")
        return [answer != "new" for answer in answers]

    async def publish_core(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish without waiting for acks (books: the next one replaces a lost one)."""
        await self._run("publish", self._publish_core, messages)

    async def _publish_core(self, messages: Sequence[tuple[str, bytes]]) -> None:
        nc = self._nc
        if nc is None:
            raise nats.errors.ConnectionClosedError
        for subject, payload in messages:
            await nc.publish(subject, payload)

    # -- consuming -------------------------------------------------------------------------------------------

    async def fetch(self, durable: str, stream: str, most: int, wait_s: float) -> list[Msg]:
        """Up to `most` messages of the shared durable pull consumer `durable` over every subject of
        `stream` ("trades", "market"; [] after `wait_s`)."""
        return await self._run("fetch", self._fetch, durable, stream, most, wait_s)

    async def _fetch(self, durable: str, stream: str, most: int, wait_s: float) -> list[Msg]:
        js = self._js
        if js is None:
            raise nats.errors.ConnectionClosedError
        sub = self._pull.get(durable)
        if sub is None:
            subjects = self.subjects_of(stream)
            config = ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.config.ack_wait_s,
                max_ack_pending=100_000,
                filter_subject=subjects[0] if len(subjects) == 1 else None,
                filter_subjects=subjects if len(subjects) > 1 else None,
            )
            sub = await js.pull_subscribe(
                subjects[0],
                durable=durable,
                stream=stream_name(self.config.subject_prefix, stream),
                config=config,
            )
            self._pull[durable] = sub
        try:
            return await sub.fetch(most, timeout=wait_s)
        except nats.errors.TimeoutError:
            return []

    async def ack(self, msgs: Sequence[Msg]) -> None:
        await self._run("ack", self._ack, msgs)

    @staticmethod
    async def _ack(msgs: Sequence[Msg]) -> None:
        for msg in msgs:
            await msg.ack()

    async def subscribe(
        self,
        kind: str,
        subject: str,
        *,
        deliver: DeliverPolicy | Start = DeliverPolicy.NEW,
        block: bool = False,
        inbox: Inbox | None = None,
    ) -> Inbox:
        """An ordered push consumer over `subject` of the `kind` stream (nats-py re-creates it after a node
        fails), from now on, from the start, from the newest message of every subject, or from a stream
        sequence or an instant (`deliver`: a policy, or a `Start`); `block`: the inbox never drops (the
        subscription waits for the reader instead); `inbox`: deliver into this one (several
        subscriptions, one reader)."""
        return await self._run("subscribe", self._subscribe, kind, subject, deliver, block, inbox)

    async def _subscribe(
        self, kind: str, subject: str, deliver: DeliverPolicy | Start, block: bool, inbox: Inbox | None
    ) -> Inbox:
        js = self._js
        if js is None:
            raise nats.errors.ConnectionClosedError
        if inbox is None:
            inbox = Inbox(block=block)
        stream = stream_of(self.config.subject_prefix, kind)
        if isinstance(deliver, DeliverPolicy):
            await js.subscribe(
                subject, stream=stream, cb=inbox.put, ordered_consumer=True, deliver_policy=deliver
            )
        elif deliver.seq is not None:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=deliver.seq)
            await js.subscribe(subject, stream=stream, cb=inbox.put, ordered_consumer=True, config=config)
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=deliver.time)
            await js.subscribe(subject, stream=stream, cb=inbox.put, ordered_consumer=True, config=config)
            # nats-py keeps this very config to re-create the ordered consumer (a node lost: from the
            # sequence after its last message, BY_START_SEQUENCE); JetStream refuses a start sequence
            # beside a start time, so that re-creation would fail forever.
            config.opt_start_time = None
        return inbox

    async def take(self, inbox: Inbox, most: int) -> list[Msg]:
        return await self._run("receive", inbox.take, most)


async def _unless_cancelled(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """`fn(*args)`; an error it raises while being cancelled (trio stopped waiting, e.g. the connection
    closing under a fetch) becomes the cancellation: nobody reads that result, and asyncio would log it."""
    try:
        return await fn(*args)
    except Exception:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError from None
        raise


async def _stop_thread(thread: AsyncioThread) -> None:
    await trio.to_thread.run_sync(thread.stop)


class LinkActor:
    """An actor that owns one `NatsLink`: `run` serves (`_serve_forever`) until `_stop` is cancelled, then
    closes the link, shielded, whatever ended it."""

    _stop: trio.CancelScope
    _link: NatsLink

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._stop:
                await self._serve_forever(task_status)
        finally:
            with trio.CancelScope(shield=True):
                await self._link.close()

    async def _serve_forever(self, task_status: trio.TaskStatus[None]) -> None:
        raise NotImplementedError
