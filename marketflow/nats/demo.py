"""`marketflow demo --nats`: the cluster on one machine. A local nats-server (JetStream), the exchange
simulator, and the three roles as separate `marketflow run` processes: collect (simulator → NATS), store
(NATS → `<state_dir>/demo.db`), serve (HTTP, MCP, dashboard from NATS). Their configuration files and logs
are left in `<state_dir>/nats-demo/` to read and copy.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import trio

from marketflow.config import Config
from marketflow.demo import _count, demo_config, demo_simulator
from marketflow.exchanges import VENUES
from marketflow.nats.server import single

ROLE_ORDER = ("store", "serve", "collect")  # the schema first, the readers next, then the data


def role_toml(config: Config, role: str, nats_url: str, state_dir: Path) -> str:
    """A configuration file for one role (`config`: the demo's, feeds on the simulator)."""
    listen = config.http.listen if role == "serve" else "127.0.0.1:0"
    lines = [
        "[daemon]",
        f"state_dir = {json.dumps(str(state_dir / role))}",
        f'roles = ["{role}"]',
        "[http]",
        f"listen = {json.dumps(listen)}",
        "[storage]",
        f"url = {json.dumps(config.storage.url)}",
        "[nats]",
        f"servers = [{json.dumps(nats_url)}]",
    ]
    for feed in config.feeds:
        lines += [
            "[[feeds]]",
            f"exchange = {json.dumps(feed.exchange)}",
            f"market = {json.dumps(feed.market)}",
            f"symbols = {json.dumps(list(feed.symbols))}",
            f"channels = {json.dumps(list(feed.channels))}",
            f"ws_url = {json.dumps(feed.ws_url)}",
            f"rest_url = {json.dumps(feed.rest_url)}",
        ]
        if not VENUES[feed.exchange].markets[feed.market].full_book:  # a whole-book venue refuses the key
            lines.append(f"book_depth = {feed.book_depth}")
    return "\n".join(lines) + "\n"


async def _http_url(log: Path, process: trio.Process) -> str:
    marker = "HTTP API listening  url="
    with trio.fail_after(60):
        while True:
            path = trio.Path(log)
            text = await path.read_text() if await path.exists() else ""
            if marker in text:
                return text.split(marker, 1)[1].split()[0]
            if process.returncode is not None:
                raise RuntimeError(f"the {log.stem} daemon exited ({process.returncode}); see {log}")
            await trio.sleep(0.1)


async def run_nats_demo(base: Config, duration: float | None, rate: float, seed: int) -> None:
    """Run everything until Ctrl-C or `duration` seconds, then stop the roles (SIGTERM) and the server."""
    work = Path(await trio.Path(base.daemon.state_dir).resolve()) / "nats-demo"
    await trio.Path(work).mkdir(parents=True, exist_ok=True)
    server = single(work / "nats")
    sim = demo_simulator(rate, seed)
    processes: dict[str, trio.Process] = {}
    db: str | None = None
    server.start()
    try:
        await server.wait_ready()
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config = demo_config(base, sim)
            db = config.storage.url.removeprefix("sqlite:///")
            urls: dict[str, str] = {}
            for role in ROLE_ORDER:
                path = work / f"{role}.toml"
                path.write_text(role_toml(config, role, server.url, work))
                log = work / f"{role}.log"
                with log.open("ab") as out:
                    processes[role] = await trio.lowlevel.open_process(
                        [sys.executable, "-m", "marketflow", "run", "--config", str(path)],
                        stdout=out,
                        stderr=out,
                    )
                urls[role] = await _http_url(log, processes[role])
            first = config.feeds[0]
            serve = urls["serve"]
            print(
                f"marketflow demo --nats: NATS at {server.url} (monitoring http://127.0.0.1:{server.http_port})"
            )
            for role in ROLE_ORDER:
                print(f"  {role:<8} pid {processes[role].pid:<8} {work / role}.toml  log {work / role}.log")
            print(f"  serve: HTTP API at {serve}  (try {serve}/book/{first.exchange}/{first.symbols[0]})")
            print(f"  watch the wire: marketflow tail trades {first.exchange} '*' --servers {server.url}")
            print(
                "  Ctrl-C stops" + (f"; stopping by itself after {duration:g} s" if duration else ""),
                flush=True,
            )
            try:
                with trio.move_on_after(duration if duration is not None else float("inf")):
                    await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    for role in reversed(ROLE_ORDER):  # collectors first: the store drains what they sent
                        await _stop(processes[role], base.daemon.shutdown_timeout_s)
                nursery.cancel_scope.cancel()
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.kill()
        server.stop()
    if db is not None:
        print(f"marketflow demo --nats: {_count(db)} trades stored in {db}", flush=True)


async def _stop(process: trio.Process, timeout_s: float) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(timeout_s + 5):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
