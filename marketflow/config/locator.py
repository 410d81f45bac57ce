"""Where each key is written: the stdlib parser gives no positions, so `_KeyLocator` re-reads the
(already valid) text to find the line on which each key, array element and table header is written."""

from __future__ import annotations

import bisect
import contextlib
import re
import tomllib

from marketflow.config.issues import _Path

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}#\r\n]+")  # numbers, booleans, dates: up to the next delimiter


class _KeyLocator:
    """Line of each key path in valid TOML text: `("feeds", 1, "symbols", 0)` -> 14.

    Tracks `[table]` and `[[array]]` headers, dotted and quoted keys, arrays spread over lines and inline
    tables. Only ever runs on text tomllib accepted; if it still trips, lines are simply unknown.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._newlines = [i for i, char in enumerate(text) if char == "\n"]
        self._lines: dict[_Path, int] = {}
        self._arrays: dict[_Path, int] = {}  # array-of-tables path -> how many elements so far
        with contextlib.suppress(IndexError, ValueError, KeyError):
            self._scan()

    def line_for(self, path: _Path) -> int | None:
        """The line of `path`, else of its nearest written parent (a missing key -> its table header)."""
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None

    def _line(self, pos: int) -> int:
        return bisect.bisect_left(self._newlines, pos) + 1

    def _mark(self, path: _Path, line: int, start: int = 1) -> None:
        for end in range(start, len(path) + 1):
            self._lines.setdefault(path[:end], line)

    def _scan(self) -> None:
        text, pos = self._text, 0
        table: _Path = ()
        while (pos := self._skip_blank(pos)) < len(text):
            line = self._line(pos)
            if text.startswith("[[", pos):
                keys, pos = self._key(pos + 2)
                pos = self._expect(pos, "]]")
                array = (*self._resolve(keys[:-1]), keys[-1])
                index = self._arrays.get(array, 0)
                self._arrays[array] = index + 1
                table = (*array, index)
                self._mark(table, line)
            elif text[pos] == "[":
                keys, pos = self._key(pos + 1)
                pos = self._expect(pos, "]")
                table = self._resolve(keys)
                self._mark(table, line)
            else:
                pos = self._key_value(pos, table)

    def _resolve(self, keys: list[str]) -> _Path:
        path: _Path = ()
        for key in keys:
            path = (*path, key)
            if path in self._arrays:  # `[feeds.x]` belongs to the latest [[feeds]]
                path = (*path, self._arrays[path] - 1)
        return path

    def _key_value(self, pos: int, table: _Path) -> int:
        line = self._line(pos)
        keys, pos = self._key(pos)
        pos = self._skip_space(self._expect(pos, "="))
        path = (*table, *keys)
        self._mark(path, line, start=len(table) + 1)
        return self._value(pos, path)

    def _key(self, pos: int) -> tuple[list[str], int]:
        text, keys = self._text, []
        while True:
            pos = self._skip_space(pos)
            if text[pos] == '"':
                end = self._basic_end(pos)
                keys.append(tomllib.loads("k = " + text[pos:end])["k"])
            elif text[pos] == "'":
                end = text.index("'", pos + 1) + 1
                keys.append(text[pos + 1 : end - 1])
            else:
                match = _BARE_KEY.match(text, pos)
                if match is None:
                    raise ValueError(pos)
                end = match.end()
                keys.append(match[0])
            pos = self._skip_space(end)
            if text[pos] != ".":
                return keys, pos
            pos += 1

    def _value(self, pos: int, path: _Path) -> int:
        text = self._text
        for quote in ('"""', "'''"):
            if text.startswith(quote, pos):
                end = pos + 3
                while not text.startswith(quote, end):
                    end += 2 if quote == '"""' and text[end] == "\\" else 1
                run = end + 3
                while run < len(text) and text[run] == quote[0] and run < end + 5:
                    run += 1  # up to two quotes may end the content: """a"""" holds a"
                return run
        if text[pos] == '"':
            return self._basic_end(pos)
        if text[pos] == "'":
            return text.index("'", pos + 1) + 1
        if text[pos] == "[":
            pos, index = pos + 1, 0
            while (pos := self._skip_blank(pos)) < len(text) and text[pos] != "]":
                if text[pos] == ",":
                    pos += 1
                    continue
                self._mark((*path, index), self._line(pos), start=len(path) + 1)
                pos = self._value(pos, (*path, index))
                index += 1
            return pos + 1
        if text[pos] == "{":
            pos += 1
            while (pos := self._skip_blank(pos)) < len(text) and text[pos] != "}":
                pos = pos + 1 if text[pos] == "," else self._key_value(pos, path)
            return pos + 1
        match = _SCALAR.match(text, pos)
        if match is None:
            raise ValueError(pos)
        return match.end()

    def _basic_end(self, pos: int) -> int:
        text, pos = self._text, pos + 1
        while text[pos] != '"':
            pos += 2 if text[pos] == "\\" else 1
        return pos + 1

    def _skip_space(self, pos: int) -> int:
        while pos < len(self._text) and self._text[pos] in " \t":
            pos += 1
        return pos

    def _skip_blank(self, pos: int) -> int:
        text = self._text
        while pos < len(text):
            if text[pos] in " \t\r\n":
                pos += 1
            elif text[pos] == "#":
                newline = text.find("\n", pos)
                pos = len(text) if newline < 0 else newline
            else:
                break
        return pos

    def _expect(self, pos: int, token: str) -> int:
        pos = self._skip_space(pos)
        if not self._text.startswith(token, pos):
            raise ValueError(pos)
        return pos + len(token)
