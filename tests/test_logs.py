"""Structured logs: JSON lines with fields, repeated errors rate-limited, secrets never printed."""

from __future__ import annotations

import io
import json
import logging

from marketflow.logs import JsonFormatter, RateLimitFilter, configure_logging, redact


def test_redact_hides_url_passwords_and_key_values() -> None:
    assert redact("postgresql://mf:s3cr3t@db:5432/mf") == "postgresql://mf:***@db:5432/mf"
    assert redact("connect failed: api_key=abc123&x=1 password=hunter2") == (
        "connect failed: api_key=***&x=1 password=***"
    )
    assert redact("sqlite:///./var/marketflow.db") == "sqlite:///./var/marketflow.db"


def record(msg: str, level: int = logging.ERROR, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("marketflow.test", level, __file__, 1, msg, None, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_rate_limit_counts_suppressed_and_reports_them() -> None:
    now = [0.0]
    limiter = RateLimitFilter(burst=3, interval_s=60, clock=lambda: now[0])
    passed = [limiter.filter(record("storage write failed")) for _ in range(10)]
    assert passed == [True] * 3 + [False] * 7
    # Another message has its own budget; info and below are never limited.
    assert limiter.filter(record("feed connected"))
    assert all(limiter.filter(record("storage write failed", logging.INFO)) for _ in range(10))
    now[0] = 60.0
    again = record("storage write failed")
    assert limiter.filter(again)
    assert again.suppressed == 7  # type: ignore[attr-defined]


def test_rate_limit_keeps_a_budget_per_rate_key() -> None:
    """Five feeds failing together: each one's lines are counted apart, none starves the others."""
    limiter = RateLimitFilter(burst=2, interval_s=60, clock=lambda: 0.0)
    passed = [
        limiter.filter(record("child failed; restarting", logging.WARNING, _rate_key=child))
        for _ in range(3)
        for child in ("bybit-spot", "binance-spot")
    ]
    assert passed == [True, True, True, True, False, False]


def test_json_lines_carry_fields_and_never_secrets() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    logging.getLogger("marketflow.storage").error(
        "storage write failed",
        extra={"url": "postgresql://mf:pw@db/mf", "frame": b'{"topic":1}', "topics": ("a", "b")},
    )
    configure_logging("info", "json", stream=stream)  # idempotent: one handler, not two
    logging.getLogger("marketflow.feed").info("feed connected", extra={"feed": "bybit-spot"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["level"] == "error" and first["logger"] == "marketflow.storage"
    assert first["msg"] == "storage write failed"
    assert first["url"] == "postgresql://mf:***@db/mf"
    assert first["frame"] == '{"topic":1}' and first["topics"] == ["a", "b"]
    assert first["ts"].endswith("Z")
    assert lines[1]["feed"] == "bybit-spot"


def test_exceptions_are_formatted_in_json() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("marketflow", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    out = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in out["exc"]


def test_http_client_request_lines_stay_out_of_info_logs() -> None:
    """httpx logs every REST request (Binance snapshots, backfill) at INFO: the daemon keeps it at WARNING."""
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    logging.getLogger("httpx").info("HTTP Request: GET http://127.0.0.1/api/v3/depth")
    logging.getLogger("marketflow.test").info("kept")
    lines = [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]
    assert lines == ["kept"]
    configure_logging("debug", "json", stream=io.StringIO())
    assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)
    configure_logging("info", "console")
