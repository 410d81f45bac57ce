"""The text of a symbol, checked before any venue reads it: one rule for a hand-written configuration, the
symbols overlay and the symbols API (`marketflow.config.overlay.clean_symbol`)."""

from __future__ import annotations

import re
from typing import Final

from marketflow.exchanges.symbols import check_ascii_symbol
from marketflow.model import SymbolError

# The longest listed symbols are under 20 characters (10000000AIDOGEUSDT); anything far longer is junk.
MAX_SYMBOL_LENGTH: Final = 32
# Two or three parts joined by `-`, or a venue's `BASE/QUOTE` (the venue then decides what it means).
_SYMBOL_TEXT = re.compile(r"[A-Za-z0-9]+(-[A-Za-z0-9]+){0,2}|[A-Za-z0-9]+/[A-Za-z0-9]+")


def check_symbol_text(raw: str) -> None:
    """Raise `SymbolError` naming what is wrong (callers add how to write a symbol) unless `raw` is ASCII
    letters and digits joined by `-` (or one `/`), at most `MAX_SYMBOL_LENGTH` long. Nothing is stripped
    or guessed: whitespace, control and non-ASCII characters (look-alikes such as a Cyrillic `С` or a
    fullwidth `Ｔ`) are refused."""
    if not raw:
        raise SymbolError("empty symbol")
    if len(raw) > MAX_SYMBOL_LENGTH:
        raise SymbolError(f"a symbol of {len(raw)} characters; symbols have at most {MAX_SYMBOL_LENGTH}")
    check_ascii_symbol(raw)  # the venues' own parsers run the same check
    if not _SYMBOL_TEXT.fullmatch(raw):
        bad = next((c for c in raw if not (c.isalnum() or c in "-/")), None)
        what = f"the character {bad!r}" if bad is not None else "a misplaced '-' or '/'"
        raise SymbolError(f"{raw!r} holds {what}")
