"""Query parameters as the HTTP routes and the MCP tools receive them → checked Python values, and the
error that names a wrong one (:class:`QueryError`, with the HTTP status to answer with).

Bounds keep a query's cost proportional to what it returns: a bin of at most :data:`MAX_BIN_DIGITS`
digits (``1e-990`` would make every price division a thousand-digit one), intervals up to a year, epoch
milliseconds in ASCII digits only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from marketflow.analytics import parse_interval
from marketflow.analytics.bars import normalize_bin
from marketflow.exchanges.symbols import check_ascii_symbol, non_ascii_character
from marketflow.model import SymbolError, us_to_iso

__all__ = [
    "MAX_BIN_DIGITS",
    "MAX_DEPTH",
    "MAX_INTERVAL_US",
    "MAX_LIMIT",
    "QueryError",
    "check_range",
    "parse_bin",
    "parse_depth",
    "parse_interval_param",
    "parse_limit",
    "parse_optional_time",
    "parse_symbol",
    "parse_time",
    "refuse_non_ascii",
]

MAX_LIMIT = 10_000
"""Largest `limit` of trades and candles a query returns."""
MAX_DEPTH = 5000
MAX_INTERVAL_US = 366 * 86_400_000_000
"""Longest bar interval (`366d`): a year's bar; longer ones only move ranges past the representable."""
MAX_BIN_DIGITS = 18
"""Most digits of a price bin, and most of them after the point: exact arithmetic stays short."""

_MIN_US = 0
_MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
_EPOCH_MS = re.compile(r"-?[0-9]{1,16}")  # ASCII digits only: int() would also read "١٢"


class QueryError(Exception):
    """A query's parameter is wrong or names nothing known; `status` is the HTTP status to answer with."""

    def __init__(
        self,
        code: str,
        detail: str,
        param: str | None = None,
        status: int = 400,
        *,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.param = param
        self.status = status
        self.retry_after_s = retry_after_s
        """Seconds after which trying again may succeed (HTTP `Retry-After`), when that is the remedy."""

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.param is not None:
            body["param"] = self.param
        return body


def parse_time(value: str | int, param: str) -> int:
    """ISO 8601 (`2026-08-09T12:00:19.680Z`; no zone means UTC) or epoch milliseconds → µs since the epoch."""
    if isinstance(value, bool):
        raise QueryError("bad_time", f"{param} must be ISO 8601 or epoch milliseconds, got {value!r}", param)
    if isinstance(value, int):
        us = value * 1000
    else:
        text = value.strip()
        if _EPOCH_MS.fullmatch(text):
            us = int(text) * 1000
        else:
            try:
                parsed = datetime.fromisoformat(text.replace("z", "Z"))
            except ValueError:
                raise QueryError(
                    "bad_time",
                    f"{param} must be ISO 8601 (e.g. 2026-08-09T12:00:19.680Z) or epoch milliseconds, "
                    f"got {value[:64]!r}",
                    param,
                ) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
            us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if not _MIN_US <= us <= _MAX_US:
        raise QueryError(
            "bad_time", f"{param} must lie between 1970 and 9999, got {str(value)[:64]!r}", param
        )
    return us


def parse_optional_time(value: str | int | None, param: str) -> int | None:
    """:func:`parse_time`, passing None (and an empty string) through as None."""
    if value is None or value == "":
        return None
    return parse_time(value, param)


def parse_limit(value: int | None, default: int, param: str = "limit") -> int:
    """A limit in 1..:data:`MAX_LIMIT` (`default` when None)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise QueryError(
            "bad_limit", f"{param} must be an integer from 1 to {MAX_LIMIT}, got {value!r}", param
        )
    return value


def parse_depth(value: int | None) -> int | None:
    """A book depth in 1..:data:`MAX_DEPTH`, or None (every level)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DEPTH:
        raise QueryError(
            "bad_depth", f"depth must be an integer from 1 to {MAX_DEPTH}, got {value!r}", "depth"
        )
    return value


def parse_bin(value: str | Decimal | None) -> Decimal | None:
    """A price bin: a decimal > 0 (text, to stay exact) of at most :data:`MAX_BIN_DIGITS` digits, at
    most that many after the point, or None (the market's default)."""
    if value is None or value == "":
        return None
    try:
        size = Decimal(value) if isinstance(value, str) and len(value) <= 64 else value
        if not isinstance(size, Decimal):
            raise ValueError(value)
        # Bounded before normalize_bin, which would write 1e999 out in a thousand digits.
        if (
            size.is_finite()
            and not -MAX_BIN_DIGITS <= int(size.as_tuple().exponent) <= size.adjusted() < MAX_BIN_DIGITS
        ):
            raise ValueError(value)
        size = normalize_bin(size)
        if len(size.as_tuple().digits) > MAX_BIN_DIGITS:
            raise ValueError(value)
        return size
    except (InvalidOperation, ValueError):
        raise QueryError(
            "bad_bin",
            f'bin must be a decimal > 0 such as "10" or "0.01" with at most {MAX_BIN_DIGITS} digits, at most '
            f"{MAX_BIN_DIGITS} of them after the point; got {str(value)[:64]!r}",
            "bin",
        ) from None


def check_range(since: int | None, until: int | None) -> None:
    if since is not None and until is not None and until <= since:
        raise QueryError(
            "bad_range", f"until ({us_to_iso(until)}) must be after since ({us_to_iso(since)})", "until"
        )


def parse_interval_param(interval: str | None) -> tuple[str, int]:
    text = "1m" if interval is None or interval == "" else interval
    try:
        step = parse_interval(text[:32])
    except ValueError as exc:
        raise QueryError("bad_interval", str(exc), "interval") from None
    if len(text) > 32 or step > MAX_INTERVAL_US:
        raise QueryError("bad_interval", f"interval must be at most 366d, got {text[:40]!r}", "interval")
    return text, step


def parse_symbol(value: str) -> str:
    """A `symbol` parameter as matched against configured symbols: stripped and upper-cased, once it is
    known to hold only ASCII (`str.upper` turns a long `ſ` into `S`: `BTC-UſDT` would find BTC-USDT). A
    look-alike is a 400 `bad_symbol` naming the character, not an unknown symbol that reads the same."""
    try:
        check_ascii_symbol(value)
    except SymbolError as exc:
        raise QueryError("bad_symbol", str(exc), "symbol") from None
    return value.strip().upper()


def refuse_non_ascii(value: str, param: str, code: str) -> None:
    """A 400 `code` naming the first non-ASCII character of `value`, if it has one: an asset or quote code
    is matched upper-cased, and `str.upper` makes a look-alike such as a long `ſ` an `S`."""
    char = non_ascii_character(value)
    if char is not None:
        raise QueryError(
            code,
            f"{param} {value[:40]!r} holds the non-ASCII character {char}; codes are ASCII letters",
            param,
        )
