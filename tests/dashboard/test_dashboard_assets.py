"""The dashboard's "all venues" view of one asset (SPEC §15) in headless Chromium, against `marketflow demo`:
the demo prints the all-venues BTC URL, the page opens on it, draws a CVD line per venue and the total,
a table row per venue, and the URL keeps the choice. A screenshot is written under pytest's tmp dir."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.dashboard.test_dashboard_browser import (  # the module's browser fixture, shared
    browser,  # noqa: F401
    open_page,
    running_demo,
    screenshot,
    wait_until,
)

ALL_VENUES = re.compile(r"dashboard at (http://\S+/dashboard#asset/BTC/1m)")


def test_demo_opens_on_all_venues_of_btc(
    browser: Browser,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with running_demo(tmp_path) as demo:
        found = ALL_VENUES.search(demo.printed)
        assert found, demo.printed
        btc = [m for m in demo.get("/markets")["markets"] if m["symbol"].startswith("BTC-")]
        venues = sorted(f"{m['exchange']}/{m['market']}/{m['symbol']}" for m in btc)
        assert len({m["exchange"] for m in btc}) >= 2  # really more than one venue
        # Every BTC market has traded, so each has a line.
        wait_until(
            "trades on every BTC market",
            lambda: (
                {k for b in demo.get("/order-flow", asset="BTC")["bars"] for k in b["by_venue"]}
                == set(venues)
            ),
            timeout=60,
        )

        page, problems = open_page(browser, viewport={"width": 1280, "height": 900})
        page.goto(found.group(1).replace("//0.0.0.0:", "//127.0.0.1:"))
        page.wait_for_function(
            "n => document.querySelectorAll('[data-testid=venues] tbody tr').length === n", arg=len(venues)
        )
        assert page.locator("[data-testid=market-select]").input_value() == "asset:BTC"
        assert page.locator("[data-testid=venues-card]").is_visible()
        assert not page.locator("[data-testid=ladder]").is_visible()
        rows = page.locator("[data-testid=venues] tbody tr")
        assert sorted(rows.nth(i).get_attribute("data-venue") or "" for i in range(rows.count())) == venues
        page.wait_for_function(
            "n => document.querySelectorAll('[data-testid=venues-chart] polyline.venue-line').length === n",
            arg=len(venues),
        )
        assert page.locator("[data-testid=venues-chart] polyline.total-line").count() == 1
        # The answer's notes name the inverse conversion and the dollar quotes.
        notes = page.locator("[data-testid=venues-notes]").inner_text()
        assert "one dollar" in notes and "amount*contract_value/price" in notes
        # Open interest summed across venues, the OI-weighted funding and a funding row per contract
        # market with derivatives data, as /derivatives?asset= says.
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=funding] tbody tr').length >= 2"
            " && document.querySelector('[data-testid=venues-oi]').textContent.endsWith(' BTC')"
        )
        merged = demo.get("/derivatives", asset="BTC", limit=1)
        rows = page.locator("[data-testid=funding] tbody tr")
        assert sorted(rows.nth(i).get_attribute("data-venue") or "" for i in range(rows.count())) == sorted(
            merged["venues"]
        )
        assert "/" in page.locator("[data-testid=venues-liquidations]").inner_text()
        # Candles of every venue merged are drawn in the main chart.
        page.wait_for_function("() => document.querySelector('[data-testid=chart] svg rect') !== null")
        screenshot(page, tmp_path / "dashboard-all-venues.png", capsys)

        # Switching to one market and back: the URL follows the choice.
        page.locator("[data-testid=market-select]").select_option(
            index=len({m["symbol"].split("-")[0] for m in demo.get("/markets")["markets"]})
        )
        page.wait_for_function("() => !location.hash.startsWith('#asset/')")
        page.wait_for_function("() => document.querySelector('[data-testid=venues-card]').hidden")
        page.wait_for_function(
            "() => !document.querySelector('[data-testid=ladder]').closest('section').hidden"
        )
        page.locator("[data-testid=market-select]").select_option("asset:BTC")
        page.wait_for_function("() => location.hash === '#asset/BTC/1m'")
        page.wait_for_function("() => !document.querySelector('[data-testid=venues-card]').hidden")
        assert problems == []
