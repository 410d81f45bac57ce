"""A trade-frame blaster for `marketflow bench`: the exchanges' real trade frames at a set or maximum rate.

The simulator (`marketflow sim`) builds every frame from a simulated market, which caps it near 40–150k
frames/s — below what a client can read. The blaster speaks the same public protocols for trades only
(Bybit v5 `publicTrade` on `/v5/public/{linear,spot}` with its subscribe acks and JSON pongs; Binance
`aggTrade` on combined streams, by URL or SUBSCRIBE) but sends pre-built frames whose timestamp and id
fields are fixed-width and patched in place: a few hundred nanoseconds per frame, so one core sends
several hundred thousand frames per second. Timestamps are the send time (ms), so a client's latency
from exchange time can be measured; ids are consecutive (Binance aggregate ids contiguous, no gaps).

    python -m marketflow.bench.blaster --frames N [--rate R] [--tls --ca-file PATH] [--symbols A,B]

It prints one JSON line `{"event":"listening",...}` with its URLs, then one `{"event":"sent",...}` per
topic when that topic's `frames` are out (connections stay open, pings still answered).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import msgspec
import trio
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from marketflow.sim.http import ws_text_frame

TEMPLATES = 1024
"""Distinct pre-built frames per topic (prices, sizes, sides); ids and times are patched per send."""
CHUNK_FRAMES = 512
"""Frames per socket write at full speed."""
READ_SIZE = 65536

BYBIT_PATHS = {"/v5/public/linear": "linear", "/v5/public/spot": "spot"}
OKX_PATH = "/ws/v5/public"
COINBASE_PATH = "/"
KRAKEN_PATH = "/v2"
MIX_PATHS = (OKX_PATH, COINBASE_PATH, KRAKEN_PATH)
"""Paths only a real-mix blaster serves (its stream goes to whatever subscribes there)."""
MIX_DISTINCT = 50_000
"""Distinct real-mix frames built (`--mix`); longer runs cycle them (book ids repeat: transport and
decode only)."""


class Template:
    """One topic's pre-built WebSocket frames with the byte offsets of their patched fields."""

    def __init__(self, frames: list[bytes], marks: dict[str, int]) -> None:
        self.frames = [bytearray(ws_text_frame(f)) for f in frames]
        shift = [len(w) - len(f) for w, f in zip(self.frames, frames, strict=True)]
        # Each placeholder is found once in the first frame; all frames share their field layout up to the
        # placeholders, so offsets are looked up per frame (prices differ in length before later fields).
        self.offsets: list[list[tuple[int, int, int]]] = []
        for frame, extra in zip(frames, shift, strict=True):
            spots: list[tuple[int, int, int]] = []
            for name, width in marks.items():
                token = PLACEHOLDER[name]
                start = 0
                while (at := frame.find(token, start)) >= 0:
                    spots.append((at + extra, width, FIELD_INDEX[name]))
                    start = at + len(token)
            self.offsets.append(spots)


# Fixed-width placeholders in the built frames, replaced per send: 13-digit millisecond times,
# 13-digit Binance ids, 12-hex-digit Bybit ids, 12-digit Bybit sequence numbers.
PLACEHOLDER = {
    "ts": b"9999999999999",
    "id13": b"8888888888888",
    "id13b": b"7777777777777",
    "hex12": b"zzzzzzzzzzzz",
    "seq12": b"666666666666",
}
FIELD_INDEX = {"ts": 0, "id13": 1, "id13b": 2, "hex12": 3, "seq12": 4}


def _prices(seed: int, count: int, start: float, tick: float) -> list[tuple[str, str, bool]]:
    rng = random.Random(seed)
    price = start
    out = []
    for _ in range(count):
        price = max(tick, price + rng.choice((-2, -1, 0, 0, 1, 2)) * tick)
        size = rng.choice(("0.001", "0.002", "0.010", "0.025", "0.100", "0.500", "1.250"))
        out.append((f"{price:.2f}", size, rng.random() < 0.5))
    return out


def bybit_template(category: str, symbol: str, seed: int) -> Template:
    frames = []
    for price, size, buy in _prices(seed, TEMPLATES, 65000.0, 0.1):
        trade: dict[str, object] = {
            "T": 9999999999999,
            "s": symbol,
            "S": "Buy" if buy else "Sell",
            "v": size,
            "p": price,
        }
        if category == "linear":
            trade["L"] = "PlusTick"
            trade["i"] = "zzzzzzzzzzzz-5b31-4112-a178-eb6023af0000"
        else:
            trade["i"] = "229" + "8888888888888" + "000"  # numeric-string ids on spot
        trade["BT"] = False
        trade["RPI"] = False
        trade["seq"] = 666666666666
        frame = {"topic": f"publicTrade.{symbol}", "type": "snapshot", "ts": 9999999999999, "data": [trade]}
        frames.append(msgspec.json.encode(frame))
    marks = (
        {"ts": 13, "seq12": 12, "hex12": 12} if category == "linear" else {"ts": 13, "seq12": 12, "id13": 13}
    )
    return Template(frames, marks)


def binance_template(stream: str, symbol: str, seed: int) -> Template:
    frames = []
    for price, size, buyer_maker in _prices(seed, TEMPLATES, 65000.0, 0.01):
        data = (
            b'{"e":"aggTrade","E":9999999999999,"s":"' + symbol.encode() + b'","a":8888888888888,'
            b'"p":"' + price.encode() + b'","q":"' + size.encode() + b'","f":7777777777777,'
            b'"l":7777777777777,"T":9999999999999,"m":'
            + (b"true" if buyer_maker else b"false")
            + b',"M":true}'
        )
        frames.append(b'{"stream":"' + stream.encode() + b'","data":' + data + b"}")
    return Template(frames, {"ts": 13, "id13": 13, "id13b": 13})


class Topic:
    """One subscribed trade topic on one connection: its template and how far it has got."""

    def __init__(self, name: str, template: Template, frames: int, rate: float) -> None:
        self.name = name
        self.template = template
        self.frames = frames
        self.rate = rate
        self.sent = 0
        self.started = 0.0
        self.first_wall = 0.0

    def build(self, count: int) -> bytes:
        """The next `count` frames, stamped now; ids count up from 0 per connection and topic."""
        now_ms = b"%013d" % (time.time_ns() // 1_000_000)
        frames = self.template.frames
        offsets = self.template.offsets
        n_templates = len(frames)
        out = bytearray()
        n = self.sent
        for k in range(n, n + count):
            slot = k % n_templates
            buf = frames[slot]
            values = (
                now_ms,
                b"%013d" % (1_000_000_000_000 + k),
                b"%013d" % (2_000_000_000_000 + k),
                b"%012x" % k,
                b"%012d" % (100_000_000_000 + k),
            )
            for at, width, index in offsets[slot]:
                buf[at : at + width] = values[index]
            out += buf
        self.sent = n + count
        return bytes(out)


class Connection:
    def __init__(self, blaster: Blaster, stream: trio.abc.Stream, proto: ServerProtocol, path: str) -> None:
        self.blaster = blaster
        self.stream = stream
        self.proto = proto
        self.path = path
        self.topics: list[Topic] = []
        self.wake = trio.Event()
        self.lock = trio.StrictFIFOLock()

    async def send_control(self, payload: bytes) -> None:
        self.proto.send_text(payload)
        await self.flush()

    async def flush(self) -> None:
        out = b"".join(self.proto.data_to_send())
        if out:
            async with self.lock:
                await self.stream.send_all(out)

    def subscribe(self, name: str) -> bool:
        if self.blaster.mix is not None:  # one real-mix stream per connection, whatever was asked
            name = "mix"
        template = self.blaster.template_for(self.path, name)
        if template is None:
            return False
        if all(t.name != name for t in self.topics):
            self.topics.append(Topic(name, template, self.blaster.frames, self.blaster.rate))
            self.wake.set()
        return True

    async def on_text(self, data: bytes) -> None:
        try:
            msg = json.loads(data)
        except ValueError:
            return
        if self.path in BYBIT_PATHS:
            op = msg.get("op")
            req_id = msg.get("req_id", "")
            if op == "ping":
                reply = {
                    "success": True,
                    "ret_msg": "pong",
                    "conn_id": "blaster",
                    "req_id": req_id,
                    "op": "ping",
                }
            elif op in ("subscribe", "unsubscribe"):
                bad = [a for a in msg.get("args", []) if op == "subscribe" and not self.subscribe(a)]
                ret = "" if not bad else f"error:handler not found,topic:{bad[0]}"
                reply = {"success": not bad, "ret_msg": ret, "conn_id": "blaster", "req_id": req_id, "op": op}
            else:
                return
            await self.send_control(json.dumps(reply).encode())
        elif msg.get("method") in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if msg["method"] == "SUBSCRIBE":
                for stream in msg.get("params", []):
                    self.subscribe(stream)
            await self.send_control(json.dumps({"result": None, "id": msg.get("id")}).encode())

    async def read_loop(self, pending: list[Frame]) -> None:
        events: list[object] = list(pending)
        while True:
            for event in events:
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    await self.on_text(bytes(event.data))
            await self.flush()  # pongs and close frames the protocol queued
            data = await self.stream.receive_some(READ_SIZE)
            if not data:
                return
            self.proto.receive_data(data)
            events = list(self.proto.events_received())

    async def write_loop(self) -> None:
        await self.blaster.go.wait()
        while True:
            active = [t for t in self.topics if t.sent < t.frames]
            if not active:
                self.wake = trio.Event()
                await self.wake.wait()
                continue
            now = time.perf_counter()
            next_due = now + 1.0
            for topic in active:
                if topic.sent == 0 and topic.started == 0.0:
                    topic.started = now
                    topic.first_wall = time.time()
                if topic.rate <= 0:
                    count = min(CHUNK_FRAMES, topic.frames - topic.sent)
                else:
                    due = min(topic.frames, int((now - topic.started) * topic.rate) + 1)
                    count = min(due - topic.sent, 8 * CHUNK_FRAMES)
                    next_due = min(next_due, topic.started + (due) / topic.rate)
                if count > 0:
                    chunk = topic.build(count)
                    async with self.lock:
                        await self.stream.send_all(chunk)
                    if topic.sent >= topic.frames:
                        self.blaster.report(topic)
            if all(t.rate > 0 for t in active):
                await trio.sleep(max(0.0, next_due - time.perf_counter()))
            else:
                await trio.lowlevel.checkpoint()


class Blaster:
    def __init__(
        self, frames: int, rate: float, symbols: list[str], seed: int, mix: str | None = None
    ) -> None:
        self.frames = frames
        self.rate = rate
        self.symbols = symbols
        self.seed = seed
        self.mix = mix
        """A venue: serve its real-mix frames (`mixframes`, sent as built, cycled) to every connection."""
        self._templates: dict[tuple[str, str], Template] = {}
        if mix is not None:
            from marketflow.bench import mixframes

            built = mixframes.build(mix, min(frames, MIX_DISTINCT), seed=seed)
            self._templates["mix", mix] = Template(built.frames, {})
        self.go = trio.Event()
        """Data flows once this is set: at once, or on a `go` line on stdin (`--hold`)."""
        self.out: Callable[[dict[str, object]], None] = lambda record: print(json.dumps(record), flush=True)

    def template_for(self, path: str, topic: str) -> Template | None:
        if self.mix is not None:
            return self._templates["mix", self.mix]
        category = BYBIT_PATHS.get(path)
        if category is not None:
            symbol = topic.removeprefix("publicTrade.")
            if not topic.startswith("publicTrade.") or symbol not in self.symbols:
                return None
            key = (category, symbol)
            if key not in self._templates:
                self._templates[key] = bybit_template(category, symbol, self.seed)
            return self._templates[key]
        native, _, kind = topic.partition("@")
        symbol = native.upper()
        if kind != "aggTrade" or symbol not in self.symbols:
            return None
        key = ("binance", topic)
        if key not in self._templates:
            self._templates[key] = binance_template(topic, symbol, self.seed)
        return self._templates[key]

    def report(self, topic: Topic) -> None:
        self.out(
            {
                "event": "sent",
                "topic": topic.name,
                "frames": topic.sent,
                "seconds": round(time.perf_counter() - topic.started, 6),
                "first_wall": topic.first_wall,
            }
        )

    async def handle(self, tcp: trio.SocketStream, ssl_context: ssl.SSLContext | None) -> None:
        stream: trio.abc.Stream = tcp
        if ssl_context is not None:
            stream = trio.SSLStream(tcp, ssl_context, server_side=True, https_compatible=True)
        proto = ServerProtocol(max_size=1 << 20)
        try:
            request: Request | None = None
            while request is None:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    return
                proto.receive_data(data)
                for event in proto.events_received():
                    if isinstance(event, Request):
                        request = event
            split = urlsplit(request.path)
            path = split.path
            if path.startswith("/ws/"):
                names = path[4:].split("/")
                path = "/ws"
            else:
                names = parse_qs(split.query).get("streams", [""])[0].split("/")
            known = path in BYBIT_PATHS or path in ("/ws", "/stream", "/public/stream", "/market/stream")
            known = known or (self.mix is not None and path in MIX_PATHS)
            response = proto.accept(request) if known else proto.reject(404, "not found")
            proto.send_response(response)
            await stream.send_all(b"".join(proto.data_to_send()))
            if not known:
                return
            conn = Connection(self, stream, proto, path)
            for name in names:
                if name:
                    conn.subscribe(name)
            if self.mix is not None:
                conn.subscribe("mix")
            pending = [e for e in proto.events_received() if isinstance(e, Frame)]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.write_loop)
                await conn.read_loop(pending)
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def serve(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        ca_file: str | None,
        hold: bool = False,
    ) -> None:
        if hold:

            async def wait_for_go() -> None:
                while True:
                    line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                    if not line or line.strip() == "go":
                        self.go.set()
                        return

            trio.lowlevel.spawn_system_task(wait_for_go)
        else:
            self.go.set()
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        scheme = "wss" if ssl_context else "ws"
        root = f"{scheme}://{host}:{bound}"
        self.out(
            {
                "event": "listening",
                "bybit-linear": f"{root}/v5/public/linear",
                "bybit-spot": f"{root}/v5/public/spot",
                "binance": root,
                "okx": f"{root}{OKX_PATH}",
                "coinbase": f"{root}{COINBASE_PATH}",
                "kraken": f"{root}{KRAKEN_PATH}",
                "ca_file": ca_file,
            }
        )

        async def handler(stream: trio.SocketStream) -> None:
            await self.handle(stream, ssl_context)

        await trio.serve_listeners(handler, listeners)


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """A server context for 127.0.0.1 signed by a throwaway CA whose PEM is written to `ca_file`."""
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m marketflow.bench.blaster", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--frames", type=int, required=True, help="frames per subscribed topic")
    parser.add_argument("--rate", type=float, default=0.0, help="frames/s per topic; 0 = as fast as read")
    parser.add_argument("--symbols", default="BTCUSDT", help="native symbols, comma-separated")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tls", action="store_true", help="serve wss with a throwaway CA (needs trustme)")
    parser.add_argument("--ca-file", type=Path, help="where to write the CA's PEM (with --tls)")
    parser.add_argument("--hold", action="store_true", help="send no data until a `go` line on stdin")
    parser.add_argument(
        "--mix",
        default=None,
        help="serve this venue's real-mix frames (bybit, binance, okx, coinbase, kraken)",
    )
    args = parser.parse_args(argv)
    context = None
    if args.tls:
        if args.ca_file is None:
            parser.error("--tls needs --ca-file")
        context = tls_context(args.ca_file)
    blaster = Blaster(args.frames, args.rate, args.symbols.split(","), args.seed, args.mix)
    with contextlib.suppress(KeyboardInterrupt):
        ca = str(args.ca_file) if args.ca_file else None
        trio.run(blaster.serve, args.host, args.port, context, ca, args.hold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
