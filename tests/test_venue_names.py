"""No venue is named outside its own package: the pipeline, daemon, config, replay and API ask the venue.

Code is checked, prose is not: string constants, identifiers and imports under `marketflow/` may not name a
venue, except in `exchanges/` (the venues themselves), `sim/` (the simulator speaks each venue's protocol)
and `bench/` (its own venue-specific frame templates). Docstrings and comments may name venues as examples.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "marketflow"
EXEMPT = ("exchanges", "sim", "bench")
NAMES = ("bybit", "binance", "okx", "coinbase", "kraken")


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the Constant nodes that are docstrings (module, class, function, or attribute docs)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for stmt in body:
            if (
                isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            ):
                found.add(id(stmt.value))
    return found


def venue_names_in_code(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant, identifier or import in `source` that names a venue."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    hits: list[tuple[int, str]] = []

    def check(node: ast.AST, text: str) -> None:
        lowered = text.lower()
        if any(name in lowered for name in NAMES):
            hits.append((getattr(node, "lineno", 0), text))

    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            check(node, node.value)
        elif isinstance(node, ast.Name):
            check(node, node.id)
        elif isinstance(node, ast.Attribute):
            check(node, node.attr)
        elif isinstance(node, ast.arg):
            check(node, node.arg)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            check(node, node.name)
        elif isinstance(node, ast.ImportFrom):
            check(node, f"{node.module} {' '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            check(node, " ".join(a.name for a in node.names))
    return hits


def checked_files() -> list[Path]:
    return sorted(path for path in ROOT.rglob("*.py") if path.relative_to(ROOT).parts[0] not in EXEMPT)


def test_no_venue_named_in_code_outside_the_venues() -> None:
    offenders = [
        f"{path.relative_to(ROOT.parent)}:{line}: {text[:60]!r}"
        for path in checked_files()
        for line, text in venue_names_in_code(path.read_text())
    ]
    assert offenders == []


def test_the_check_covers_the_pipeline_daemon_config_and_replay() -> None:
    names = {str(p.relative_to(ROOT)) for p in checked_files()}
    assert {
        "daemon.py",
        "daemon_children.py",
        "daemon_feeds.py",
        "daemon_nats.py",
        "daemon_health.py",
        "config/checker.py",
        "replay.py",
        "demo.py",
        "pipeline/backfill.py",
        "pipeline/feed.py",
    } <= names
    assert not any(n.startswith(EXEMPT) for n in names)


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ('x = "bybit"\n', True),
        ("if exchange == 'Binance': pass\n", True),
        ("from marketflow.exchanges import okx\n", True),
        ("def f(kraken: int) -> None: pass\n", True),
        ("LIMITS = {('coinbase', 'spot'): 1}\n", True),
        ('def f() -> None:\n    """Bybit resyncs by resubscribing."""\n', False),
        ("# binance: REST snapshots\nx = 1\n", False),
        ('"""OKX sends zero checksums."""\n', False),
    ],
)
def test_the_check_sees_code_and_spares_prose(source: str, found: bool) -> None:
    assert bool(venue_names_in_code(source)) is found
