"""Hypothesis strategies and small builders for analytics tests."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import strategies as st

from marketflow.model import Trade

DAY_US = 86_400_000_000
T0 = 20_000 * DAY_US  # 2024-10-04T00:00:00Z: aligned to every interval up to a day
EXCHANGE = "bybit"
SYMBOL = "BTC-USDT"


def trade(
    price: str | Decimal,
    amount: str | Decimal,
    side: str,
    ts: int,
    *,
    exchange: str = EXCHANGE,
    symbol: str = SYMBOL,
    id: str = "",
) -> Trade:
    return Trade(
        exchange=exchange,
        symbol=symbol,
        id=id or f"{ts}-{price}-{amount}",
        price=Decimal(price),
        amount=Decimal(amount),
        side="buy" if side == "buy" else "sell",
        ts=ts,
        recv_ts=ts,
    )


@st.composite
def trade_lists(
    draw: st.DrawFn,
    *,
    min_size: int = 1,
    max_size: int = 60,
    span_s: int | None = None,
    step_us: int = 500_000,
    zero_amounts: bool = True,
) -> list[Trade]:
    """Trades in arrival order: prices on a 0.1 grid around 1000 written with 1 or 2 decimals (one form per
    list), amounts 0.01–0.50 (a few ties), times on a 0.5 s grid over 5 s to 10 min (ties) in any order (late
    trades)."""
    two_places = draw(st.booleans())
    if span_s is None:
        span_s = draw(st.sampled_from([600, 120, 5]))
    low_amount = 0 if zero_amounts else 1
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(9990, 10030),
                st.integers(low_amount, 50),
                st.sampled_from(["buy", "sell"]),
                st.integers(0, span_s * 1_000_000 // step_us),
            ),
            min_size=min_size,
            max_size=max_size,
        )
    )
    out = []
    for index, (tick, cents, side, step) in enumerate(rows):
        price = Decimal(tick * 10).scaleb(-2) if two_places else Decimal(tick).scaleb(-1)
        out.append(trade(price, Decimal(cents).scaleb(-2), side, T0 + step * step_us, id=str(index)))
    return out


def earliest_first(trades: list[Trade]) -> list[Trade]:
    """The same trades with the earliest real one moved to the front (so a live engine holds every bar)."""
    index = min(range(len(trades)), key=lambda i: (trades[i].amount <= 0, trades[i].ts))
    return [trades[index], *trades[:index], *trades[index + 1 :]]
