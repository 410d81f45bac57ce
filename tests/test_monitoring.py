"""The shipped Prometheus alert rules and Grafana dashboard: valid, tested, and over metrics that exist.

`promtool test rules` runs the rules' own unit tests (configs/prometheus/*.test.yml); it comes with Debian's
`prometheus` package, which scripts/test installs, so CI always runs it. Every metric and label the rules
and the dashboard name is then looked up in the `/metrics` of a real daemon fed by the simulator.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from marketflow.daemon import Daemon
from marketflow.sim import SimConfig, SimServer
from tests.conftest import sim_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RULES = CONFIGS / "prometheus" / "marketflow.rules.yml"
RULE_TESTS = CONFIGS / "prometheus" / "marketflow.rules.test.yml"
DASHBOARD = CONFIGS / "grafana" / "marketflow.json"

PROMETHEUS_OWN = {"up"}  # made by Prometheus for every target, never in a target's /metrics
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
FUNCTIONS = {
    "rate", "irate", "increase", "deriv", "delta", "sum", "max", "min", "avg", "count", "histogram_quantile",
    "max_over_time", "min_over_time", "avg_over_time", "abs", "clamp_min", "topk", "time",
}  # fmt: skip
KEYWORDS = {"and", "or", "unless", "bool", "on", "ignoring", "group_left", "group_right", "offset"}


def rule_expressions() -> list[str]:
    """`expr` of every rule: read line by line (the file is YAML; expressions are one line each)."""
    exprs = [line.split("expr:", 1)[1].strip() for line in RULES.read_text().splitlines() if "expr:" in line]
    assert exprs and all(exprs)
    return exprs


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


@attrs.frozen
class Selector:
    metric: str
    labels: frozenset[str]


def selectors(expr: str) -> list[Selector]:
    """The metrics an expression reads, each with the label names it matches on.

    Strings, ranges and grouping clauses are cut out first; what is left is functions (followed by
    `(`), operators' keywords, numbers and metric names. An identifier that is none of the first two
    is a metric, whatever its prefix, so a misspelt name is caught too.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    found: list[Selector] = []
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?", text):
        name, matchers, call = match.groups()
        if call and not matchers:
            assert name in FUNCTIONS, f"unknown function {name!r} in {expr!r}"
            continue
        if name in KEYWORDS or re.fullmatch(r"\d.*|e\d*|inf|nan", name):
            continue
        labels = re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers or "")
        found.append(Selector(name, frozenset(labels)))
    return found


def test_selector_extraction_catches_unknown_names_and_labels() -> None:
    """The checker itself: metrics found whatever their prefix, labels found, functions skipped."""
    got = selectors('sum by (le) (rate(foo_bar{a="1", b=~"x|y"}[5m])) > 0 and on (c) baz == 1')
    assert got == [Selector("foo_bar", frozenset({"a", "b"})), Selector("baz", frozenset())]


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt install prometheus; scripts/test does)")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name], capture_output=True, text=True, cwd=RULE_TESTS.parent
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert is exercised by the unit tests, firing at least once.
    alerts = set(re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.M))
    firing = set(re.findall(r"alertname: (\w+)\n\s*exp_alerts:\n\s*- exp_labels", RULE_TESTS.read_text()))
    assert alerts and alerts == firing


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "marketflow" and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    panels = list(dashboard_panels())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])
    # No two panels on the same cells.
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        mine = {
            (x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & mine, panel["title"]
        cells |= mine


async def scrape_when_ready(url: str, connections: int) -> str:
    """/metrics once every connection streams and trades have been received (so histograms have samples)."""
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            text = (await client.get(f"{url}/metrics")).text
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            streaming = sum(v for (name, _), v in samples.items() if name == "marketflow_feed_streaming")
            received = sum(
                v for (name, _), v in samples.items() if name == "marketflow_trade_receive_lag_seconds_count"
            )
            if streaming == connections and received > 0:
                return text
            await trio.sleep(0.05)


async def test_every_metric_the_rules_and_dashboard_use_is_exported(tmp_path: Path) -> None:
    sim = SimServer(SimConfig(seed=16, rate=50))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sim.run)
            config = sim_config(tmp_path, sim)
            config = attrs.evolve(
                config,
                feeds=tuple(attrs.evolve(f, channels=("trades", "book")) for f in config.feeds),
                # the archiving job's metrics exist only where it runs (its first pass is 60 s away)
                archive=attrs.evolve(config.archive, after_days=1, dir=str(tmp_path / "archive")),
            )
            daemon = Daemon(config)
            await nursery.start(daemon.run)
            text = await scrape_when_ready(daemon.http.url, len(daemon.connections))
            await daemon.stop()
            nursery.cancel_scope.cancel()

    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    used = {
        source: [s for expr in exprs for s in selectors(expr)]
        for source, exprs in (("rules", rule_expressions()), ("dashboard", dashboard_expressions()))
    }
    assert len(used["rules"]) >= 14 and len(used["dashboard"]) >= 30
    for source, found in used.items():
        for selector in found:
            if selector.metric in PROMETHEUS_OWN:
                continue
            assert selector.metric in exported, f"{source} uses {selector.metric}, which /metrics lacks"
            unknown = selector.labels - exported[selector.metric] - TARGET_LABELS
            assert not unknown, f"{source}: {selector.metric} has no label {sorted(unknown)}"
