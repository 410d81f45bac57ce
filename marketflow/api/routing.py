"""What every SPEC §6 route module shares: the blueprint, the `api` decorator (auth, validation and
documentation of a route) and the documented parameter types."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar, cast

from msgspec import Meta
from quart import Blueprint
from quart_schema import document_response, security_scheme, validate_querystring, validate_request

from marketflow.api.app import SECURITY, ErrorBody, require_json
from marketflow.api.auth import require_scope
from marketflow.api.keys import Scope
from marketflow.api.queries import MAX_LIMIT
from marketflow.exchanges import VENUES, market_names

blueprint = Blueprint("marketflow", __name__)

Time = Annotated[
    str, Meta(description="ISO 8601 (2026-08-09T12:00:19.680Z; no zone = UTC) or epoch milliseconds")
]
Exchange = Annotated[str, Meta(description=" | ".join(VENUES))]
Symbol = Annotated[
    str, Meta(description="normalized (BTC-USDT, BTC-USDT-PERP) or native (BTCUSDT) when unambiguous")
]
Market = Annotated[
    str, Meta(description=" | ".join(market_names()) + ": picks the market of a native symbol")
]
Limit = Annotated[int, Meta(ge=1, le=MAX_LIMIT)]
Interval = Annotated[str, Meta(description='a number and s|m|h|d, e.g. "1m", "5m", "1h"')]
Bin = Annotated[str, Meta(description='price bin as a decimal string, e.g. "10"')]
Dec = Annotated[str, Meta(description="exact decimal")]
Asset = Annotated[
    str, Meta(description="instead of exchange+symbol: one asset (BTC) on every market (SPEC §15)")
]
Markets = Annotated[str, Meta(description="with asset: spot | perp | all (default)")]
Quotes = Annotated[str, Meta(description="with asset: quotes to include (default USD,USDT,USDC: one dollar)")]
Iso = Annotated[str, Meta(description="ISO 8601 UTC with milliseconds")]


F = TypeVar("F", bound=Callable[..., Any])


def api(
    response: type | None = None,
    *,
    scope: Scope | None = Scope.READ,
    query: type | None = None,
    body: type | None = None,
    status: int | tuple[int, ...] = 200,
    errors: tuple[int, ...] = (),
) -> Callable[[F], F]:
    """Auth, validation and documentation of a route, applied in that order (outermost first).

    `scope` None: open to everyone. `query`/`body`: the msgspec type validating (and documenting) the
    query string or the JSON body. `response`: the type of a `status` answer; `errors`: the error statuses.
    Auth comes first so a request without the right key is refused before its parameters are looked at.
    """

    def decorator(func: F) -> F:
        wrapped: Any = func
        for code in errors:
            wrapped = document_response(ErrorBody, code)(wrapped)
        if response is not None:
            for code in (status,) if isinstance(status, int) else status:
                wrapped = document_response(response, code)(wrapped)
        if query is not None:
            wrapped = validate_querystring(query)(wrapped)
        if body is not None:
            wrapped = require_json(validate_request(body)(wrapped))
        if scope is not None:
            wrapped = security_scheme(SECURITY)(require_scope(scope)(wrapped))
        return cast(F, wrapped)

    return decorator
