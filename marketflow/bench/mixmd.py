"""The README's real-mix tables (Markdown) from a `marketflow bench` JSON: figures pasted, not typed.

    python -m marketflow.bench.mixmd bench-results/bench.json

Prints four tables, each under the bold title the README's "Real traffic mix" section gives it: real mix
in process, books only in process, over wss at full speed, paced over wss.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

NAMES = {"binance": "binance USD-M", "okx": "okx swap"}


def _k(value: float) -> str:
    return f"{round(value / 1000):,}k"


def _name(case: str) -> str:
    venue, _, rest = case.partition(" ")
    return f"{NAMES.get(venue, venue)} {rest}"


def _cf(row: dict[str, Any]) -> list[str]:
    if "cryptofeed_us" not in row:
        return ["n/a", ""]
    ratio = f"{row['vs_cryptofeed']:.1f}×"
    return [f"{row['cryptofeed_us']:.2f}", f"**{ratio}**" if row["vs_cryptofeed"] >= 2 else ratio]


def _stages(r: dict[str, Any]) -> list[str]:
    return [f"{r['decode_us']:.2f}", f"{r['+ book_us']:.2f}", f"{r['+ actors_us']:.2f}"]


def _rates(r: dict[str, Any]) -> list[str]:
    return [_k(r["frames_per_s_per_core"]), _k(r["book_updates_per_s_per_core"])]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def tables(report: dict[str, Any]) -> str:
    parts = []
    rows = report.get("mix", {}).get("rows", [])
    mixed = [
        [
            _name(r["case"]),
            f"{r['book_frames']}:{r['tickers']}:{r['trades']}",
            f"{r['levels_per_book_frame']}",
        ]
        + _stages(r)
        + _rates(r)
        + _cf(r)
        for r in rows
        if " mix" in r["case"]
    ]
    head = [
        "levels/delta",
        "decode",
        "+ exact book",
        "+ actors",
        "frames/s per core",
        "book updates/s per core",
    ]
    cf = ["cryptofeed 3.0.1", "ratio"]
    parts.append("**Real mix, in process**\n\n" + _table(["case", "book:ticker:trade", *head, *cf], mixed))
    books = [
        [_name(r["case"]), f"{r['levels_per_book_frame']}"] + _stages(r) + _rates(r) + _cf(r)
        for r in rows
        if " books" in r["case"]
    ]
    parts.append("**Books only, in process**\n\n" + _table(["case", *head, *cf], books))
    by_venue: dict[str, dict[str, dict[str, Any]]] = {}
    for row in report.get("mix_wss", []):
        by_venue.setdefault(row["venue"], {})[row["stage"]] = row
    wss = []
    for venue, got in by_venue.items():
        line = [venue]
        for stage in ("transport", "decode"):
            r = got.get(stage, {})
            line += [f"{r.get('frames_per_s', 0):,.0f}", f"{r.get('cpu_us_per_frame') or 0:.2f}"]
        wss.append(line)
    headers = ["venue", "transport frames/s", "µs CPU/frame", "+ decode frames/s", "µs CPU/frame"]
    parts.append("**Over wss from the blaster**\n\n" + _table(headers, wss))
    paced = []
    for r in report.get("mix_paced", []):
        lat = r.get("latency_send_applied") or {}
        ms = " / ".join(
            f"{lat[k]:,.0f}" if lat.get(k) is not None else "–" for k in ("p50_ms", "p99_ms", "max_ms")
        )
        gaps = (r.get("book") or {}).get("gaps", "–")
        paced.append(
            [
                r["venue"],
                f"{r['frames_per_s']:,.0f}",
                f"{r['cpu_us_per_frame']:.2f}",
                f"{r['cpu_pct']:.0f}%",
                ms,
                f"{r['loss']:,}",
                str(gaps),
            ]
        )
    headers = ["venue", "frames/s", "µs CPU/frame", "CPU", "latency p50 / p99 / max ms", "loss", "book gaps"]
    rate = report["mix_paced"][0]["rate_requested"] if report.get("mix_paced") else 0
    parts.append(f"**Paced over wss at {rate:,.0f} frames/s**\n\n" + _table(headers, paced))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m marketflow.bench.mixmd BENCH_JSON", file=sys.stderr)
        return 2
    try:
        report = json.loads(Path(args[0]).read_text())
    except (OSError, ValueError) as exc:
        print(f"mixmd: cannot read {args[0]}: {exc}", file=sys.stderr)
        return 1
    print(tables(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
