"""Capture files: valid zstd JSON lines with headers, rotation by size and time, retention, drops, a writer
killed mid-file, and a daemon capturing everything its connections receive from the simulator."""

from __future__ import annotations

import base64
from pathlib import Path

import attrs
import msgspec
import pytest
import trio
import zstandard

from marketflow.capture import Capture, CaptureFileError, CaptureReader, Record, file_name
from marketflow.config import CaptureConfig, FeedConfig
from marketflow.daemon import Daemon
from marketflow.sim import SimConfig, SimServer
from tests.conftest import sim_config, wait_for

FEED = FeedConfig("bybit", "spot", ("BTC-USDT",), ws_url="ws://127.0.0.1:1/v5/public/spot")


def make_capture(tmp_path: Path, **settings: object) -> Capture:
    capture = Capture(CaptureConfig(enabled=True, dir=str(tmp_path / "cap"), **settings), str(tmp_path))  # type: ignore[arg-type]
    capture.add_connection("bybit-spot", FEED, "ws://127.0.0.1:1/v5/public/spot", ("publicTrade.BTCUSDT",))
    return capture


def frame(n: int) -> bytes:
    return b'{"topic":"publicTrade.BTCUSDT","n":%d,"pad":"%s"}' % (n, b"x" * 40)


def read(path: Path) -> tuple[CaptureReader, list[Record]]:
    reader = CaptureReader(path)
    return reader, list(reader.records())


def files(capture: Capture) -> list[Path]:
    return sorted(capture.directory.glob("*.jsonl.zst"), key=lambda p: (p.stat().st_mtime_ns, p.name))


async def test_writes_a_header_then_every_frame_event_and_rest_answer(tmp_path: Path) -> None:
    capture = make_capture(tmp_path)
    async with trio.open_nursery() as nursery:
        writer = capture.writer()
        await nursery.start(writer.run)
        capture.frames("bybit-spot", 1_000, [frame(1), frame(2)])
        capture.frames("bybit-spot", 2_000, [b'{"op":"pong"}', b"\xff\x00binary"])
        capture.event("bybit-spot", "disconnected")
        capture.http_client("binance", "spot", "https://api.binance.com")  # registers the REST stream
        capture.rest("rest-binance-spot", "https://api.binance.com/api/v3/depth?symbol=X", 200, b'{"a":1}')
        writer.request_stop()
    [rest_file, ws_file] = sorted(capture.directory.glob("*.jsonl.zst"), key=lambda p: p.name, reverse=True)
    reader, records = read(ws_file)
    assert reader.truncated is None
    header = reader.header
    assert (header.type, header.version, header.kind, header.feed) == ("header", 1, "ws", "bybit-spot")
    assert (header.exchange, header.market, header.url) == (
        "bybit",
        "spot",
        "ws://127.0.0.1:1/v5/public/spot",
    )
    assert header.topics == ["publicTrade.BTCUSDT"] and header.started > 0
    assert header.config is not None and header.config.feed_config() == FEED
    assert [(r.recv, r.frame_bytes()) for r in records[:4]] == [
        (1_000, frame(1)),
        (1_000, frame(2)),
        (2_000, b'{"op":"pong"}'),
        (2_000, b"\xff\x00binary"),
    ]
    assert records[3].frame is None and records[3].frame_b64 == base64.b64encode(b"\xff\x00binary").decode()
    assert (records[4].type, records[4].event) == ("event", "disconnected")
    # The raw text is kept exactly: one JSON line per frame, `frame` holding the text as received.
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(ws_file.read_bytes()).split(b"\n")
    assert raw[1] == b'{"recv":1000,"frame":' + msgspec.json.encode(frame(1).decode()) + b"}"
    rest_reader, rest_records = read(rest_file)
    assert rest_reader.header.kind == "rest" and rest_reader.header.feed == "rest-binance-spot"
    assert [(r.type, r.url, r.status, r.body_bytes()) for r in rest_records] == [
        ("rest", "https://api.binance.com/api/v3/depth?symbol=X", 200, b'{"a":1}')
    ]
    stats = capture.statistics()
    assert (stats.frames, stats.records, stats.dropped, stats.files_opened) == (4, 6, 0, 2)
    assert stats.state == "stopped" and stats.current_files == {}


async def test_rotates_by_size_and_every_file_stands_alone(tmp_path: Path) -> None:
    capture = make_capture(tmp_path, rotate_mb=0.002)  # 2000 uncompressed bytes
    async with trio.open_nursery() as nursery:
        writer = capture.writer()
        await nursery.start(writer.run)
        for n in range(100):
            capture.frames("bybit-spot", 1_000 + n, [frame(n)])
        writer.request_stop()
    paths = files(capture)
    assert len(paths) >= 3
    seen = []
    for seq, path in enumerate(paths):
        reader, records = read(path)
        assert reader.truncated is None
        assert reader.header.seq == seq and path.name.endswith(f"-{seq}.jsonl.zst")
        seen += [r.frame_bytes() for r in records]
    assert seen == [frame(n) for n in range(100)]


async def test_rotates_by_time(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    capture = make_capture(tmp_path, rotate_s=60)

    async def written(n: int) -> None:
        # Worker-thread writes take real time, during which autojump moves on: wait for each.
        await wait_for(lambda: capture.statistics().records == n, 0.001)

    async with trio.open_nursery() as nursery:
        writer = capture.writer()
        await nursery.start(writer.run)
        capture.frames("bybit-spot", 1, [frame(1)])
        await written(1)
        await trio.sleep(30)
        capture.frames("bybit-spot", 2, [frame(2)])
        await written(2)
        await trio.sleep(40)  # the first file is past 60 s at the next flush
        capture.frames("bybit-spot", 3, [frame(3)])
        await written(3)
        writer.request_stop()
    paths = files(capture)
    assert [[r.frame_bytes() for r in read(p)[1]] for p in paths] == [[frame(1), frame(2)], [frame(3)]]


async def test_retention_deletes_the_oldest_closed_files(tmp_path: Path) -> None:
    capture = make_capture(tmp_path, rotate_mb=0.002, max_total_mb=0.002)
    async with trio.open_nursery() as nursery:
        writer = capture.writer()
        await nursery.start(writer.run)
        for n in range(300):
            capture.frames("bybit-spot", 1_000 + n, [frame(n)])
        writer.request_stop()
    stats = capture.statistics()
    paths = files(capture)
    assert stats.files_deleted > 0 and len(paths) == stats.files_opened - stats.files_deleted
    assert sum(p.stat().st_size for p in paths) <= 2_000 + max(p.stat().st_size for p in paths)
    # What is left is the newest part of the stream.
    assert read(paths[-1])[1][-1].frame_bytes() == frame(299)


async def test_a_full_queue_drops_and_counts_never_blocks(tmp_path: Path) -> None:
    capture = Capture(CaptureConfig(enabled=True), str(tmp_path), capacity=2)
    capture.add_connection("bybit-spot", FEED, "ws://x", ())
    for n in range(5):
        capture.frames("bybit-spot", n, [frame(n), frame(n)])
    assert capture.statistics().dropped == 6
    assert capture.statistics().queued == 2


async def test_a_killed_writer_leaves_files_readable_up_to_the_last_flush(tmp_path: Path) -> None:
    capture = make_capture(tmp_path)
    async with trio.open_nursery() as nursery:
        writer = capture.writer()
        await nursery.start(writer.run)
        capture.frames("bybit-spot", 1, [frame(1), frame(2)])
        await wait_for(lambda: capture.statistics().bytes_out > 0)  # flushed (at most ~1 s)
        capture.frames("bybit-spot", 2, [frame(3)])  # not flushed yet
        # "Kill": read the file as it is on disk now, while the writer still holds it open.
        [path] = files(capture)
        reader, records = read(path)
        nursery.cancel_scope.cancel()
    assert [r.frame_bytes() for r in records] == [frame(1), frame(2)]
    assert reader.truncated is not None and "ends early after line 3" in reader.truncated
    # A cancelled writer still ends its zstd frames (what was queued is lost): the file is complete now.
    reader, records = read(path)
    assert reader.truncated is None and [r.frame_bytes() for r in records][:2] == [frame(1), frame(2)]


def test_reader_names_file_and_line_of_a_corrupt_record(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl.zst"
    lines = b'{"type":"header","version":1,"kind":"ws","feed":"f","exchange":"bybit","market":"spot",'
    lines += b'"url":"u"}\n'
    lines += b'{"recv":1,"frame":"a"}\n{"recv":2,"frame":\n{"recv":3,"frame":"c"}\n'
    path.write_bytes(zstandard.ZstdCompressor().compress(lines))
    reader = CaptureReader(path)
    got = []
    with pytest.raises(CaptureFileError, match=rf"^{path}:3: corrupt record"):
        got.extend(reader.records())
    assert [r.frame for r in got] == ["a"]


def test_reader_refuses_what_is_not_a_capture(tmp_path: Path) -> None:
    plain = tmp_path / "plain.jsonl.zst"
    plain.write_bytes(b"not zstd at all")
    with pytest.raises(CaptureFileError, match="corrupt zstd data"):
        CaptureReader(plain)
    other = tmp_path / "other.jsonl.zst"
    other.write_bytes(zstandard.ZstdCompressor().compress(b'{"hello":1}\n'))
    with pytest.raises(CaptureFileError, match=rf"^{other}:1: "):
        CaptureReader(other)
    with pytest.raises(CaptureFileError, match="cannot open"):
        CaptureReader(tmp_path / "missing.jsonl.zst")


def test_file_names_are_safe_and_ordered() -> None:
    assert file_name("binance-usdm/market", 1_786_276_819_000_000, 3) == (
        "binance-usdm_market-20260809T120019Z-3.jsonl.zst"
    )
    assert file_name("binance-spot#2", 0, 0) == "binance-spot_2-19700101T000000Z-0.jsonl.zst"


async def test_the_daemon_captures_everything_its_connections_receive(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=5, rate=100, max_frames=40))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config = sim_config(tmp_path, sim, markets=("spot",))
            config = attrs.evolve(config, capture=attrs.evolve(config.capture, enabled=True))
            daemon = Daemon(config)
            await nursery.start(daemon.run)
            counters = daemon.feed_counters["bybit-spot"]
            await wait_for(lambda: counters.data_frames >= 80)
            assert daemon.capture is not None
            status = {c.name: c for c in daemon.supervisor.statistics().children}["capture"]
            assert status.state == "running"
            await daemon.stop()
            nursery.cancel_scope.cancel()
    stats = daemon.capture.statistics()
    assert stats.directory == str(tmp_path / "capture") and stats.dropped == 0
    [path] = (tmp_path / "capture").glob("bybit-spot-*.jsonl.zst")
    reader, records = read(path)
    frames = [r for r in records if r.type == "frame"]
    # Every message the feed counted, acks and pongs included, is in the file.
    assert len(frames) == counters.messages == stats.frames
    assert any(b'"op":"subscribe"' in r.frame_bytes() for r in frames)
    assert [r.recv for r in frames] == sorted(r.recv for r in frames)
    assert records[-1].type == "event" and records[-1].event == "disconnected"
