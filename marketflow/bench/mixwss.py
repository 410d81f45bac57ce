"""The real mix over wss for `marketflow bench`: each venue's `mixframes` served by the blaster.

- `mix_over_wss`: at full speed, the transport alone, then + the venue's decoder (client process CPU per
  frame, frames/s);
- `mix_paced`: at `Plan.paced_rate` frames/s into the worker's `book` stage (transport with the daemon's
  read coalescing, decoder, exact book): client CPU per frame and the latency from each frame's due time at
  the blaster to the end of the read that applied it (`send_latencies_us`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from marketflow.bench.case import Client, Env, run_case
from marketflow.bench.measure import latency_summary
from marketflow.bench.plan import Plan


def mix_over_wss(env: Env, plan: Plan, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Each venue's real mix over wss from the blaster: the transport alone, then + the venue's decoder
    (CPU per frame of the client process; frames/s at full speed)."""
    from marketflow.bench import mixframes
    from marketflow.exchanges import VENUES

    rows = []
    for venue, spec in mixframes.SPECS.items():
        if venue not in VENUES:
            continue
        mixed = attrs.evolve(env, exchange=venue, market=spec.market, symbol=spec.native, mix=venue)
        for stage in ("transport", "decode"):
            log(f"- {venue} mix over wss: {stage}")
            r = run_case(
                mixed,
                Client("marketflow", stage),
                frames=plan.mix_wss_frames,
                rate=0,
                tls=True,
                name=f"{venue} mix {stage}",
            )
            env.counter = mixed.counter
            rows.append(r.json() | {"venue": venue, "stage": stage})
    return rows


def send_latencies_us(done: list[list[float]], first_wall: float, rate: float, frames: int) -> list[float]:
    """Per frame: when the client was done with it minus when the blaster was due to send it (frame `i`
    at `first_wall + i / rate`). `done` is the client's (wall time, data frames done so far) per read."""
    out: list[float] = []
    prev = 0
    for wall, count in done:
        upto = min(int(count), frames)
        out += [(wall - first_wall - i / rate) * 1e6 for i in range(prev, upto)]
        prev = max(prev, upto)
    return out


def mix_paced(env: Env, plan: Plan, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Each venue's real mix over wss at `plan.paced_rate` frames/s into the `book` stage (transport,
    decoder and the exact book, read coalescing as the daemon's): client CPU per frame, and the latency
    from each frame's send time to its book update applied (or its trade or ticker decoded)."""
    from marketflow.bench import mixframes
    from marketflow.bench.blaster import MIX_DISTINCT
    from marketflow.exchanges import VENUES

    frames = min(plan.mix_paced_frames, MIX_DISTINCT)
    rows = []
    for venue, spec in mixframes.SPECS.items():
        if venue not in VENUES:
            continue
        mixed = attrs.evolve(
            env, exchange=venue, market=spec.market, symbol=spec.native, mix=venue, mix_frames=frames
        )
        log(f"- {venue} mix over wss, paced at {plan.paced_rate:,.0f} frames/s: + exact book")
        r = run_case(
            mixed,
            Client("marketflow", "book"),
            frames=frames,
            rate=plan.paced_rate,
            tls=True,
            name=f"{venue} mix paced",
        )
        env.counter = mixed.counter
        row = r.json() | {"venue": venue, "stage": "book"}
        first_wall = r.sent.get("first_wall")
        if first_wall and r.final.get("done"):
            samples = send_latencies_us(r.final["done"], float(first_wall), plan.paced_rate, frames)
            row["latency_send_applied"] = latency_summary(samples)
        row["book"] = r.final.get("book")
        row["coalesced_waits"] = r.final.get("coalesced_waits")
        rows.append(row)
    return rows
