"""`marketflow bench` output: a plain-text table for the terminal and a PNG of rate, latency and RSS."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _num(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value:,}{suffix}"


def _grid(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    return "\n".join(out)


def _stage_row(stage: dict[str, Any]) -> list[str]:
    cpu = stage["cpu_us_per_frame"]
    return [
        stage["stage"] + (" (wss)" if stage["tls"] else " (ws)"),
        _num(stage["frames_per_s"], 0),
        _num(cpu, 2),
        _num(1e6 / cpu, 0) if cpu else "–",
        _num(stage["cpu_pct"], 0, "%"),
        _num(stage["loss"]),
        _num(stage["rss_max_mb"], 0),
    ]


def table(report: dict[str, Any]) -> str:
    parts: list[str] = []
    if "soak" in report:
        s = report["soak"]
        parts.append(
            f"Soak: {s['minutes']} min, {s['symbols']} symbols with depth-{s['book_depth']} books: RSS "
            f"{s['rss_start_mb']} MB at start, max {s['rss_max_mb']} MB, {s['rss_end_mb']} MB at the end; "
            f"slope after the first third {s['rss_slope_mb_per_h_after_first_third']} MB/h"
        )
        return "\n".join(parts)
    cf = report.get("cryptofeed") or report.get("mix", {}).get("cryptofeed") or None
    if cf is not None and "version" not in cf:
        cf = None
    parts.append(
        f"marketflow bench — {report['machine']['cpus']} CPUs, Python {report['machine']['python']}"
        + (f"; cryptofeed {cf['version']}" if cf else "; cryptofeed not run")
    )
    if "mix" in report:
        from marketflow.bench import mix

        parts.append("\n" + mix.table(report["mix"]))
    if report.get("mix_wss"):
        parts.append("\nReal mix over wss from the blaster (client process CPU; full speed):")
        by_venue: dict[str, dict[str, dict[str, Any]]] = {}
        for row in report["mix_wss"]:
            by_venue.setdefault(row["venue"], {})[row["stage"]] = row
        rows = []
        for venue, stages in by_venue.items():
            line = [venue]
            for stage in ("transport", "decode"):
                got = stages.get(stage, {})
                line += [_num(got.get("frames_per_s"), 0), _num(got.get("cpu_us_per_frame"), 2)]
            rows.append(line)
        headers = ["venue", "transport frames/s", "µs/frame", "+ decode frames/s", "µs/frame"]
        parts.append(_grid(headers, rows))
    if report.get("mix_paced"):
        rate = report["mix_paced"][0]["rate_requested"]
        parts.append(
            f"\nReal mix over wss at {rate:,.0f} frames/s, + the exact book (client process CPU; latency: "
            "frame due at the blaster → its book update applied, read coalescing included):"
        )
        rows = []
        for row in report["mix_paced"]:
            lat = row.get("latency_send_applied") or {}
            book = row.get("book") or {}
            rows.append(
                [
                    row["venue"],
                    _num(row["frames_per_s"], 0),
                    _num(row["cpu_us_per_frame"], 2),
                    _num(row["cpu_pct"], 0, "%"),
                    "/".join(_num(lat.get(k), 2) for k in ("p50_ms", "p99_ms", "max_ms")) if lat else "–",
                    _num(row["loss"]),
                    f"{book.get('gaps', '–')}" if book else "–",
                ]
            )
        headers = ["venue", "frames/s", "µs CPU/frame", "CPU", "latency p50/p99/max ms", "loss", "book gaps"]
        parts.append(_grid(headers, rows))
    if "stages" not in report:
        return "\n".join(parts)
    parts.append("\nStages at full speed (CPU is the client process alone; frames = trades here):")
    rows = [_stage_row(stage) for stage in report.get("stages", [])]
    parts.append(_grid(["stage", "frames/s", "µs CPU/frame", "frames/s/core", "CPU", "loss", "RSS MB"], rows))
    parts.append("\nSustained rate with zero loss (frames/s), wss:")
    rows = [
        [
            label,
            _num(v["zero_loss_rate"], 0),
            _num(v["burst_rate"], 0),
            f"{v['burst_loss']:,} ({v['burst_loss_pct']}%)",
        ]
        for label, v in report.get("sustained", {}).items()
    ]
    parts.append(_grid(["client", "zero-loss rate", "burst rate", "burst loss"], rows))
    parts.append("\nPaced over wss:")
    rows = []
    for p in report.get("paced", []):
        commit = p.get("latency_commit") or {}
        rows.append(
            [
                p["client"],
                _num(p["rate_requested"], 0),
                _num(p["cpu_us_per_frame"], 2),
                _num(p["loss"]),
                "/".join(_num(commit.get(k), 1) for k in ("p50_ms", "p99_ms", "max_ms")) if commit else "–",
                _num(p["rss_max_mb"], 0),
            ]
        )
    parts.append(
        _grid(
            [
                "client",
                "frames/s",
                "µs CPU/frame",
                "loss",
                "→commit p50/p99/max ms",
                "RSS MB",
            ],
            rows,
        )
    )
    api = report.get("api")
    if api:
        commit = api.get("latency_commit") or {}
        seen = api.get("latency_api") or {}
        c = "/".join(_num(commit.get(k)) for k in ("p50_ms", "p99_ms", "max_ms"))
        v = "/".join(_num(seen.get(k)) for k in ("p50_ms", "p99_ms", "max_ms"))
        parts.append(
            f"\nExchange time → visible, {api['client']} at {api['rate_requested']:,.0f} frames/s: "
            f"committed p50/p99/max {c} ms; in /collectors/trades {v} ms "
            "(the API's times have ms resolution and it is polled every 10 ms)"
        )
    ratios = report.get("ratios", {})
    if any(v is not None for v in ratios.values()):
        parts.append("\nmarketflow / cryptofeed (same run; > 1 = marketflow better):")
        names = {
            "sustained_no_storage": "sustained zero-loss rate, no storage",
            "sustained_postgres": "sustained zero-loss rate, into PostgreSQL",
            "cpu_per_frame_paced_no_storage": "CPU per frame at the paced rate, no storage",
            "cpu_per_frame_paced_postgres": "CPU per frame at the paced rate, into PostgreSQL",
        }
        for key, label in names.items():
            parts.append(f"  {label:<52} {_num(ratios.get(key), 2, '×')}")
    return "\n".join(parts)


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """Rate, commit latency and RSS over time per case; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if "soak" not in report and "cases" not in report:
        return None  # the real-mix table alone: nothing over time to plot
    if "soak" in report:
        fig, ax = plt.subplots(figsize=(9, 4))
        series = report["soak"]["series"]
        ax.plot([t / 60 for t, _ in series], [r / 2**20 for _, r in series])
        ax.set_xlabel("minutes")
        ax.set_ylabel("RSS (MB)")
        ax.set_title(f"marketflow soak: {report['soak']['symbols']} symbols, depth-200 books")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
    fig, (rate_ax, lat_ax, rss_ax) = plt.subplots(3, 1, figsize=(11, 11))
    for case in report.get("paced", []) + [c for c in report.get("cases", []) if "burst" in c["name"]]:
        series = case["series"]
        if len(series) < 2:
            continue
        xs, ys = [], []
        j = 0
        for t1, n1, _ in series:  # delivered per second over a 1 s window (commits come in chunks)
            while j < len(series) - 1 and t1 - series[j + 1][0] >= 1.0:
                j += 1
            t0, n0, _ = series[j]
            if t1 - t0 >= 0.5:
                xs.append(t1)
                ys.append((n1 - n0) / (t1 - t0))
        style = "-" if case["client"].startswith("marketflow") else "--"
        rate_ax.plot(xs, ys, style, label=case["name"], linewidth=1)
        rss_ax.plot(
            [t for t, _, _ in series],
            [r / 2**20 for _, _, r in series],
            style,
            label=case["name"],
            linewidth=1,
        )
    for case in report.get("paced", []):
        points = case.get("commit_points") or []
        if points:
            lat_ax.plot(
                [t for t, _ in points], [ms for _, ms in points], ".", markersize=2, label=case["name"]
            )
    rate_ax.set_ylabel("frames/s delivered (1 s window)")
    rate_ax.set_title("rate over time (bursts and paced runs)")
    lat_ax.set_ylabel("exchange → committed (ms, worst per chunk)")
    lat_ax.set_title("latency over time, paced runs")
    rss_ax.set_ylabel("RSS (MB)")
    rss_ax.set_xlabel("seconds since the first frame")
    for ax in (rate_ax, lat_ax, rss_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
