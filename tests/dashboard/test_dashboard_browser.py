"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium), against `marketflow demo`.

The daemon and its simulator run as a subprocess exactly as a user starts them; the test reads the
dashboard URL the demo prints. What the page shows is checked against the JSON routes it reads: the
ladder's best bid/ask against `/book` (the same book version, matched by its `ts`), the POC against
`/volume-profile` over the same range. Screenshots are written under pytest's tmp dir; their paths are
printed. Without Chromium (or the playwright package) these tests fail when `CI` is set, else skip.
No browser is ever downloaded: Playwright only drives the system's Chromium.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import httpx
import pytest
import trio

try:
    from playwright.sync_api import Browser, Page, Response, sync_playwright
except ImportError:  # pragma: no cover - judged by the `browser` fixture
    sync_playwright = None  # type: ignore[assignment]

from marketflow.model import Trade, us_to_iso
from marketflow.storage import open_store

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium waits on the (closed) network at start-up.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY_STORAGE = "marketflow.apiKey"
DASHBOARD_LINE = re.compile(r"dashboard at (http://\S+/dashboard)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    problem = None
    if sync_playwright is None:
        problem = "the playwright package is not installed (pip install -e '.[dev]')"
    elif not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run: {problem}")
        pytest.skip(problem)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


@attrs.define
class Demo:
    dashboard: str
    base: str
    config: Path
    process: subprocess.Popen[str]

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(self.base + path, params=params, headers=self.headers, timeout=10)
        response.raise_for_status()
        return response.json()

    headers: dict[str, str] = attrs.Factory(dict)
    printed: str = ""
    """The line the demo printed the dashboard's URL in."""


@contextmanager
def running_demo(tmp_path: Path, *, listen: str = "127.0.0.1:0") -> Iterator[Demo]:
    """`marketflow demo` in a subprocess on `listen` (port 0: any), until the block ends."""
    config = tmp_path / "marketflow.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "var"}"\nshutdown_timeout_s = 5\n\n[http]\nlisten = "{listen}"\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MARKETFLOW_CONFIG", "MARKETFLOW_STORAGE_URL")}
    log = (tmp_path / "demo.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "marketflow", "demo", "--config", str(config), "--rate", "20"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        dashboard = None
        printed = ""
        deadline = time.monotonic() + 60
        while dashboard is None:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and process.poll() is None, "the demo printed no dashboard URL; see demo.log"
            try:
                printed = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            found = DASHBOARD_LINE.search(printed)
            if found:
                # A wildcard listener is reached over loopback.
                dashboard = found.group(1).replace("//0.0.0.0:", "//127.0.0.1:")
        yield Demo(dashboard, dashboard.removesuffix("/dashboard"), config, process, printed=printed)
    finally:
        # SIGTERM, not SIGINT: a shell that started pytest in the background leaves SIGINT ignored.
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


class BookWatcher(threading.Thread):
    """Polls `/book` much faster than the book changes, remembering every version's best levels by `ts`."""

    def __init__(self, demo: Demo, exchange: str, symbol: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{demo.base}/book/{exchange}/{symbol}"
        self.headers = demo.headers
        self.seen: dict[str, tuple[str, str]] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5, headers=self.headers) as client:
            while not self.stopping.wait(0.02):
                book = client.get(self.url, params={"depth": 1}).json()
                if book["status"] == "synced" and book["bids"] and book["asks"]:
                    self.seen[book["ts"]] = (book["bids"][0][0], book["asks"][0][0])


def open_page(browser: Browser, **context: Any) -> tuple[Page, list[str]]:
    """A fresh page (own session storage) and the list its console errors and page errors go to.

    The page's CSP forbids eval, so `wait_for_function` takes functions, never bare expressions.
    """
    page = browser.new_context(**context).new_page()
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
    return page, problems


def screenshot(page: Page, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page.screenshot(path=str(path), full_page=True)
    with capsys.disabled():
        print(f"\n  dashboard screenshot: {path}")


def wait_until(what: str, condition: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_dashboard_shows_a_live_market(
    browser: Browser, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_demo(tmp_path) as demo:
        page, problems = open_page(browser, viewport={"width": 1280, "height": 800})
        profiles: list[Response] = []  # the page's own /volume-profile answers
        page.on("response", lambda r: profiles.append(r) if "/volume-profile?" in r.url else None)
        # A browser asking for / lands on the dashboard.
        page.goto(demo.base + "/")
        assert page.url == demo.dashboard

        # Feed health: every connection of the demo, streaming.
        rows = page.locator("[data-testid=feed-row]")
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=feed-row][data-state=streaming]').length >= 5"
        )
        names = {rows.nth(i).get_attribute("data-feed") for i in range(rows.count())}
        assert {"bybit-spot", "bybit-linear", "binance-spot"} <= names
        # msgs/s needs two samples of the counters, a second apart.
        page.wait_for_function("() => document.querySelector('[data-testid=feed-rate]').textContent !== '–'")

        # The ladder's best bid and ask are /book's, for the same version of the book.
        watcher = BookWatcher(demo, "bybit", "BTC-USDT")
        watcher.start()
        try:
            compared: set[str] = set()
            deadline = time.monotonic() + 30
            while len(compared) < 3 and time.monotonic() < deadline:
                shown = page.evaluate(
                    """() => ({
                        ts: document.querySelector('[data-testid=ladder]').dataset.ts,
                        bid: document.querySelector('[data-testid=ladder-best-bid]')?.textContent,
                        ask: document.querySelector('[data-testid=ladder-best-ask]')?.textContent,
                        summary: [document.querySelector('[data-testid=best-bid]').textContent,
                                  document.querySelector('[data-testid=best-ask]').textContent],
                    })"""
                )
                if shown["ts"] and shown["ts"] in watcher.seen:
                    assert (shown["bid"], shown["ask"]) == watcher.seen[shown["ts"]], shown
                    assert shown["summary"] == [shown["bid"], shown["ask"]]
                    compared.add(shown["ts"])
                time.sleep(0.25)
        finally:
            watcher.stopping.set()
            watcher.join()
        assert compared, "never saw the page show a book version /book also answered"

        # The POC shown is /volume-profile's over the range the page drew (its candles' range, up to its
        # newest trade): one of the page's answers for that range, exactly. (A /volume-profile read here
        # would hold the trades that arrived since, and may have moved the POC.)
        def poc_matches() -> bool:
            shown = page.evaluate(
                "() => { const p = document.querySelector('[data-testid=poc]');"
                " return {poc: p.textContent, since: p.dataset.since}; }"
            )
            if not shown["since"]:
                return False
            answered = [
                r.json()
                for r in list(profiles)
                if r.ok and parse_qs(urlsplit(r.url).query).get("since") == [shown["since"]]
            ]
            return any(
                profile["poc"] == shown["poc"] and shown["poc"] in [b["price"] for b in profile["bins"]]
                for profile in answered
            )

        wait_until("the page's POC to equal /volume-profile's", poc_matches)

        # New trades change what is shown.
        before = page.evaluate(
            "() => [document.querySelector('[data-testid=trade-count]').dataset.count,"
            " document.querySelector('[data-testid=last-trade]').dataset.id]"
        )
        page.wait_for_function(
            """([count, id]) =>
                document.querySelector('[data-testid=trade-count]').dataset.count !== count &&
                document.querySelector('[data-testid=last-trade]').dataset.id !== id""",
            arg=before,
        )
        assert page.locator("[data-testid=chart] svg rect").count() > 3
        assert page.locator("[data-testid=footprint] td.cell").count() >= 1
        assert page.locator("[data-testid=banner]").is_hidden()

        screenshot(page, tmp_path / "dashboard-desktop.png", capsys)
        phone, phone_problems = open_page(
            browser, viewport={"width": 390, "height": 844}, color_scheme="dark", device_scale_factor=2
        )
        phone.goto(demo.dashboard)
        phone.wait_for_selector("[data-testid=last-trade]")
        phone.wait_for_selector("[data-testid=chart] svg")
        screenshot(phone, tmp_path / "dashboard-phone-dark.png", capsys)
        # CSP violations and script errors show up as console errors.
        assert problems == [] and phone_problems == []


def test_dashboard_asks_for_a_key_when_reads_need_one(
    browser: Browser, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A wildcard listener is not loopback: reads need a key even from 127.0.0.1.
    with running_demo(tmp_path, listen="0.0.0.0:0") as demo:
        assert httpx.get(demo.base + "/collectors/status").status_code == 401
        page, problems = open_page(browser, viewport={"width": 1280, "height": 800})
        requests: list[tuple[str, str | None]] = []
        page.on("request", lambda r: requests.append((r.url, r.headers.get("authorization"))))
        page.goto(demo.dashboard)

        # The page asks for a key instead of showing errors.
        page.wait_for_selector("[data-testid=auth]", state="visible")
        assert page.locator("#main").is_hidden()
        assert page.locator("[data-testid=banner]").is_hidden()
        text = page.locator("body").inner_text().lower()
        for word in ("error", "401", "unauthorized", "failed", "cannot"):
            assert word not in text, word
        screenshot(page, tmp_path / "dashboard-key-form.png", capsys)

        # A wrong key is refused, said so, and not kept.
        page.fill("[data-testid=key-input]", "mf_" + "x" * 43)
        page.click("[data-testid=key-submit]")
        page.wait_for_function(
            "() => document.querySelector('[data-testid=auth-message]').textContent.includes('not accepted')"
        )
        assert page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") is None

        created = subprocess.run(
            [sys.executable, "-m", "marketflow", "keys", "create", "--config", str(demo.config)]
            + ["--name", "dashboard", "--scopes", "read"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        key = created.stdout.split()[0]
        page.fill("[data-testid=key-input]", key)
        page.click("[data-testid=key-submit]")
        page.wait_for_selector("[data-testid=feed-row]")
        assert page.locator("[data-testid=auth]").is_hidden()
        page.wait_for_selector("[data-testid=last-trade]")

        # Kept in this tab's session storage, sent as a header, never in a URL.
        assert page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") == key
        assert page.evaluate(f"localStorage.getItem('{KEY_STORAGE}')") is None
        assert key not in page.url
        assert all(key not in url for url, _ in requests)
        data = [auth for url, auth in requests if "/collectors/status" in url]
        assert data and data[-1] == f"Bearer {key}"

        # A reload in the same tab keeps the key; no form.
        page.reload()
        page.wait_for_selector("[data-testid=feed-row]")
        assert page.locator("[data-testid=auth]").is_hidden()
        # The refused key's 401s are the browser's network log, not script errors.
        assert [p for p in problems if "401" not in p] == []


HISTORY_TRADES = 240  # one every 6 s: 24 one-minute bars, all inside the page's 60-candle window


def seed_old_trades(db: Path, start_us: int) -> Decimal:
    """Store trades of BTC-USDT that ended hours ago; returns their CVD (taker buys minus sells)."""
    trades = [
        Trade(
            "bybit",
            "BTC-USDT",
            str(i),
            Decimal("60000") + Decimal(i % 17) * 5 + Decimal(i % 2) / 2,
            Decimal("0.01") * (i % 5 + 1),
            "sell" if i % 3 == 0 else "buy",
            start_us + i * 6_000_000,
            start_us + i * 6_000_000,
        )
        for i in range(HISTORY_TRADES)
    ]

    async def write() -> None:
        store = open_store(f"sqlite:///{db}")
        await store.open()
        try:
            assert await store.write_trades(trades) == len(trades)
        finally:
            await store.close()

    trio.run(write)
    return sum((t.amount if t.side == "buy" else -t.amount for t in trades), Decimal(0))


@contextmanager
def running_daemon(tmp_path: Path, config: Path) -> Iterator[str]:
    """`marketflow run --config` in a subprocess (JSON logs); yields its base URL, until the block ends."""
    env = {k: v for k, v in os.environ.items() if k not in ("MARKETFLOW_CONFIG", "MARKETFLOW_STORAGE_URL")}
    process = subprocess.Popen(
        [sys.executable, "-m", "marketflow", "run", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    urls: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stderr is not None
        with (tmp_path / "daemon.log").open("w") as log:
            for line in process.stderr:
                log.write(line)
                log.flush()
                if "HTTP API listening" in line:
                    urls.put(json.loads(line)["url"])

    threading.Thread(target=pump, daemon=True).start()
    try:
        try:
            yield urls.get(timeout=60)
        except queue.Empty:
            pytest.fail("the daemon never said where it listens; see daemon.log")
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_dashboard_draws_historical_data(
    browser: Browser, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only trades from hours ago, no live feed: the charts end at the newest trade, not at the clock."""
    state = tmp_path / "var"
    state.mkdir()
    start_us = (int(time.time()) // 60 - 5 * 60) * 60_000_000  # five hours ago, on a minute boundary
    cvd = seed_old_trades(state / "marketflow.db", start_us)
    config = tmp_path / "marketflow.toml"
    # The feed points at a closed port (the discard port): it never delivers, the stored trades are all.
    config.write_text(
        f'[daemon]\nstate_dir = "{state}"\nlog_format = "json"\nshutdown_timeout_s = 5\n'
        '[http]\nlisten = "127.0.0.1:0"\n'
        '[[feeds]]\nexchange = "bybit"\nmarket = "spot"\nsymbols = ["BTCUSDT"]\nchannels = ["trades"]\n'
        'ws_url = "ws://127.0.0.1:9/v5/public/spot"\nrest_url = "http://127.0.0.1:9"\n'
    )
    with running_daemon(tmp_path, config) as base:
        page, problems = open_page(browser, viewport={"width": 1280, "height": 800})
        page.goto(base + "/dashboard")
        page.wait_for_selector("[data-testid=last-trade]")
        assert page.locator("[data-testid=last-trade]").get_attribute("data-id") == str(HISTORY_TRADES - 1)
        # Candles, the volume profile's POC, delta and CVD, and the footprint are drawn, not "Waiting...".
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=chart] svg rect').length > 20 &&"
            " document.querySelector('[data-testid=poc]').dataset.since"
        )
        assert page.locator("[data-testid=chart-empty]").is_hidden()
        assert page.locator("[data-testid=chart] polyline.cvd").count() == 1
        assert page.locator("#s-cvd").text_content() == format(cvd.normalize(), "f")
        shown = page.evaluate(
            "() => { const p = document.querySelector('[data-testid=poc]');"
            " return {poc: p.textContent, since: p.dataset.since}; }"
        )
        assert shown["since"] == us_to_iso(start_us)  # the window reaches back to the first stored trade
        profile = httpx.get(
            base + "/volume-profile",
            params={"exchange": "bybit", "symbol": "BTC-USDT", "since": shown["since"]},
            timeout=10,
        ).json()
        assert shown["poc"] == profile["poc"]
        page.wait_for_selector("[data-testid=footprint] td.cell")
        for empty in ("chart-empty", "fp-empty", "tape-empty"):
            assert page.locator(f"#{empty}").is_hidden(), empty
        screenshot(page, tmp_path / "dashboard-history.png", capsys)
        assert problems == []


def test_dashboard_shows_derivatives_and_liquidations_of_a_perpetual(
    browser: Browser, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_demo(tmp_path) as demo:
        page, problems = open_page(browser, viewport={"width": 1280, "height": 800})
        # The page's own /ticker answers: the feed keeps moving the mark, so a /ticker read here would be
        # newer than the one the page drew (a whole poll of requests later, longer on a busy machine).
        answers: list[Response] = []
        page.on("response", lambda r: answers.append(r) if "/ticker/bybit/BTC-USDT-PERP" in r.url else None)
        page.goto(demo.dashboard + "#bybit/BTC-USDT-PERP/1m")
        page.wait_for_function(
            "() => !document.querySelector('[data-testid=mark-price]').closest('.deriv').hidden"
            " && document.querySelector('[data-testid=open-interest]').textContent !== '–'"
        )
        ticker = demo.get("/ticker/bybit/BTC-USDT-PERP")
        assert ticker["mark_price"] is not None and ticker["next_funding_time"] is not None

        # The header's values are one of the page's /ticker answers, exactly.
        def agrees() -> bool:
            shown = page.evaluate(
                """() => ({
                    mark: document.querySelector('[data-testid=mark-price]').textContent,
                    funding: document.querySelector('[data-testid=funding-rate]').textContent,
                    at: document.querySelector('[data-testid=funding-countdown]').dataset.at,
                    countdown: document.querySelector('[data-testid=funding-countdown]').textContent,
                })"""
            )
            assert re.fullmatch(r"\d\d:\d\d:\d\d", shown["countdown"]), shown
            served = [a.json() for a in list(answers) if a.ok]
            return any(
                shown["mark"] == now["mark_price"]
                and shown["funding"] == now["funding_rate"]
                and shown["at"] == now["next_funding_time"]
                for now in served
            )

        wait_until("the header to show /ticker's mark, funding and next funding time", agrees)
        # Liquidations are marked on the candles (the simulator liquidates a few times a second).
        page.wait_for_selector("[data-testid=chart] svg [data-testid=liq-mark]")
        page.wait_for_selector("[data-testid=chart] svg [data-testid=oi-change]")
        screenshot(page, tmp_path / "dashboard-perpetual.png", capsys)
        # A spot market has no derivatives: the header hides them.
        page.select_option("[data-testid=market-select]", label="bybit spot · BTC-USDT")
        page.wait_for_function("() => document.querySelector('.summary .deriv').hidden")
        assert problems == []
