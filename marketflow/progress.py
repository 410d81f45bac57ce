"""A one-line progress display for long-running commands (`replay`, `bench`, `db upgrade`).

On a terminal it redraws one line on stderr (done/total, rate, ETA) at most every `REDRAW_S` seconds;
when stderr is not a terminal (a log, a pipe, systemd) it prints nothing at all, so logs stay quiet:

    with Progress(total=n, label="replay") as progress:
        for chunk in work:
            ...
            progress.advance(len(chunk))
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

REDRAW_S = 0.1


class Progress:
    """Counts work done; draws it on a TTY, does nothing elsewhere. `total` None or 0: no ETA."""

    def __init__(
        self,
        total: int | None = None,
        label: str = "",
        *,
        unit: str = "",
        stream: TextIO | None = None,
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.done = 0
        self._stream = sys.stderr if stream is None else stream
        self.enabled = _is_tty(self._stream)
        self._started = time.monotonic()
        self._drawn_at = float("-inf")
        self._width = 0

    def __enter__(self) -> Progress:
        self._started = time.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def advance(self, n: int = 1) -> None:
        """Count `n` more units done; redraw if the last drawing is old enough."""
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._drawn_at >= REDRAW_S:
            self._drawn_at = now
            self._draw(now)

    def close(self) -> None:
        """Erase the line (the caller prints its own summary)."""
        if self.enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0

    def line(self, now: float | None = None) -> str:
        """The text drawn: `label 1234/5000 frames 25%  8123/s  ETA 0:00:04`."""
        elapsed = max((time.monotonic() if now is None else now) - self._started, 1e-9)
        rate = self.done / elapsed
        unit = f" {self.unit}" if self.unit else ""
        parts = [self.label] if self.label else []
        if self.total:
            percent = min(100, 100 * self.done // self.total)
            parts.append(f"{self.done}/{self.total}{unit} {percent:3d}%")
        else:
            parts.append(f"{self.done}{unit}")
        parts.append(f"{rate:,.0f}/s")
        if self.total and rate > 0:
            parts.append("ETA " + _clock(max(0.0, (self.total - self.done) / rate)))
        return "  ".join(parts)

    def _draw(self, now: float) -> None:
        text = self.line(now)
        pad = max(0, self._width - len(text))
        self._stream.write("\r" + text + " " * pad)
        self._stream.flush()
        self._width = len(text)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def _clock(seconds: float) -> str:
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
