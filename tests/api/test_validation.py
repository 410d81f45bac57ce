"""Every bad parameter is a 4xx naming it; no route answers garbage with a 5xx; schemathesis agrees."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.api.conftest import Api, running_api

T = "/collectors/trades"
BTC = {"exchange": "bybit", "symbol": "BTC-USDT"}

# (method, path, query, status, error param)
CASES: list[tuple[str, dict[str, Any], int, str]] = [
    (T, {"exchange": "nowhere", "symbol": "BTC-USDT"}, 400, "exchange"),
    (T, {"symbol": "BTC-USDT"}, 400, "exchange"),
    (T, {"exchange": "bybit", "symbol": "DOGE-USDT"}, 400, "symbol"),
    (T, {"exchange": "bybit", "symbol": "BTCUSDT"}, 400, "symbol"),  # spot or linear: ambiguous
    (T, {"exchange": "bybit", "symbol": "BTCUSDT", "market": "usdm"}, 400, "market"),
    (T, {"exchange": "bybit", "symbol": "???"}, 400, "symbol"),
    (T, {**BTC, "since": "yesterday"}, 400, "since"),
    (T, {**BTC, "until": "2026-13-45T00:00:00Z"}, 400, "until"),
    (T, {**BTC, "since": "99999999999999999"}, 400, "since"),
    (T, {**BTC, "since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, 400, "until"),
    (T, {**BTC, "limit": "10001"}, 400, "limit"),
    (T, {**BTC, "limit": "0"}, 400, "limit"),
    (T, {**BTC, "limit": "ten"}, 400, "limit"),
    ("/book/bybit/BTC-USDT", {"depth": "-1"}, 400, "depth"),
    ("/book/bybit/BTC-USDT", {"depth": "x"}, 400, "depth"),
    ("/book/nowhere/BTC-USDT", {}, 404, "exchange"),
    ("/book/bybit/DOGE-USDT", {}, 404, "symbol"),
    ("/candles", {**BTC, "interval": "7x"}, 400, "interval"),
    ("/candles", {**BTC, "limit": "10001"}, 400, "limit"),
    ("/order-flow", {**BTC, "bin": "-5", "footprint": "true"}, 400, "bin"),
    ("/order-flow", {**BTC, "footprint": "maybe"}, 400, "footprint"),
    ("/volume-profile", {**BTC, "bin": "abc"}, 400, "bin"),
    ("/volume-profile", {**BTC, "since": "nan"}, 400, "since"),
    # Costly or misleading input (issue 14.8): huge bins and intervals, non-ASCII digits.
    ("/order-flow", {**BTC, "bin": "1e-990", "footprint": "true"}, 400, "bin"),
    ("/volume-profile", {**BTC, "bin": "1e990"}, 400, "bin"),
    ("/volume-profile", {**BTC, "bin": "0." + "0" * 18 + "1"}, 400, "bin"),
    ("/volume-profile", {**BTC, "bin": "1" * 19}, 400, "bin"),
    ("/candles", {**BTC, "interval": "9" * 30 + "d"}, 400, "interval"),
    ("/order-flow", {**BTC, "interval": "367d"}, 400, "interval"),
    (T, {**BTC, "since": "\u0661\u0662"}, 400, "since"),  # Arabic-Indic "12"
    ("/candles", {**BTC, "until": "\uff11\uff12\uff13"}, 400, "until"),  # fullwidth "123"
    ("/gaps", {"exchange": "nowhere"}, 400, "exchange"),
    ("/gaps", {"symbol": "DOGE-USDT"}, 400, "symbol"),
]


async def test_every_bad_parameter_is_a_4xx_naming_it(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_api(tmp_path, markets=("spot", "linear")) as api, api.client() as client:
            for path, query, status, param in CASES:
                response = await client.get(path, params=query)
                assert response.status_code == status, (path, query, response.text)
                body = response.json()
                assert body["param"] == param, (path, query, body)
                assert isinstance(body["error"], str) and param in body["detail"], body
            # Bodies: wrong content type, not JSON, wrong shape, too big (with the admin key they need).
            admin, _ = api.keys.create("root", ["admin"])
            headers = {"X-API-Key": admin}
            url = "/auth/api-keys"
            plain = await client.post(
                url, content=b"name=x", headers={**headers, "Content-Type": "text/plain"}
            )
            assert (plain.status_code, plain.json()["param"]) == (415, "Content-Type")
            broken = await client.post(
                url, content=b"{", headers={**headers, "Content-Type": "application/json"}
            )
            assert (broken.status_code, broken.json()["param"]) == (400, "body")
            for body, param in (
                ({"scopes": ["read"]}, "name"),
                ({"name": "x", "scopes": ["root"]}, "scopes"),
                ({"name": "x", "days": 0}, "days"),
                ([1, 2], "body"),
            ):
                wrong = await client.post(url, json=body, headers=headers)
                assert (wrong.status_code, wrong.json().get("param")) == (400, param), (body, wrong.text)
            big = await client.post(url, json={"name": "x" * 100_000}, headers=headers)
            assert (big.status_code, big.json()["param"]) == (413, "body")
            assert (await client.put("/collectors/trades")).status_code == 405


GARBAGE = [
    "",
    " ",
    "-1",
    "0",
    "1e309",
    "NaN",
    "\u00e9\u4e2d\U0001f600",
    "' OR 1=1 --",
    "%00",
    "9" * 40,
    "2026-02-30T25:61:61Z",
    "[]",
    "{}",
    "true",
    "../../etc/passwd",
    "x" * 2000,
]
ROUTES: dict[str, list[str]] = {
    "/collectors/trades": ["exchange", "symbol", "market", "since", "until", "limit"],
    "/candles": ["exchange", "symbol", "market", "interval", "since", "until", "limit"],
    "/volume-profile": ["exchange", "symbol", "market", "since", "until", "bin"],
    "/order-flow": ["exchange", "symbol", "market", "interval", "since", "until", "footprint", "bin"],
    "/gaps": ["exchange", "symbol"],
    "/book/bybit/BTC-USDT": ["depth", "market"],
    "/collectors/status": [],
    "/collectors/storage/stats": [],
    "/metrics": [],
    "/markets": [],
    "/health": [],
}


async def test_no_route_answers_garbage_with_a_5xx(tmp_path: Path) -> None:
    with trio.fail_after(50):
        async with running_api(tmp_path, markets=("spot",)) as api:
            admin, _ = api.keys.create("root", ["admin"])
            async with api.client(admin) as client:
                for path, params in ROUTES.items():
                    for name in params:
                        for value in GARBAGE:
                            response = await client.get(path, params={**BTC, name: value})
                            assert response.status_code < 500, (path, name, value, response.text)
                            if response.status_code >= 400:
                                assert {"error", "detail"} <= set(response.json())
                for value in GARBAGE[:8]:
                    for path in (
                        f"/book/{value}/BTC-USDT",
                        f"/book/bybit/{value}",
                        f"/collectors/status/{value}",
                        f"/auth/api-keys/{value}",
                    ):
                        method = "DELETE" if path.startswith("/auth") else "GET"
                        response = await client.request(method, path)
                        assert response.status_code < 500, (path, response.text)
                    response = await client.post(
                        "/auth/api-keys", content=value.encode(), headers={"Content-Type": "application/json"}
                    )
                    assert response.status_code < 500


def known(operation: Any, mode: Any) -> dict[str, Any]:
    """Valid requests name a configured market, so their 200 answers get checked against the schema."""
    from schemathesis import GenerationMode

    if mode is not GenerationMode.POSITIVE:
        return {}
    names = {p.name for p in operation.query} | {p.name for p in operation.path_parameters}
    market = {"exchange": "bybit", "symbol": "BTC-USDT"}
    if "exchange" in {p.name for p in operation.path_parameters}:
        return {"path_parameters": market}
    if {"exchange", "symbol"} <= names:
        return {"query": market}
    return {}


def run_schemathesis(base_url: str, schema_doc: dict[str, Any], key: str) -> Counter[tuple[str, int]]:
    """Generated requests for every operation (valid and invalid), checked; how often each path answered
    each status."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_dict(schema_doc)
    headers = {"X-API-Key": key}
    seen: Counter[tuple[str, int]] = Counter()

    def checked(path: str, strategy: Any, checks: list[Any]) -> Any:
        @settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case: Any) -> None:
            response = case.call(base_url=base_url, headers=headers, timeout=10)
            seen[path, response.status_code] += 1
            case.validate_response(response, checks=checks)

        return check

    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() == "DELETE":
            continue  # would revoke the key the run uses
        for mode, checks in (
            (
                GenerationMode.POSITIVE,
                [
                    not_a_server_error,
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                ],
            ),
            (GenerationMode.NEGATIVE, [not_a_server_error, content_type_conformance]),
        ):
            check = checked(
                operation.path, operation.as_strategy(generation_mode=mode, **known(operation, mode)), checks
            )
            try:
                check()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to get wrong in a route without inputs
    return seen


@pytest.mark.slow
async def test_schemathesis_no_5xx_and_responses_match_their_schema(api: Api) -> None:
    admin, _ = api.keys.create("root", ["admin"])
    async with httpx.AsyncClient(base_url=api.url) as client:
        schema_doc = (await client.get("/openapi.json")).json()
    schema_doc["servers"] = [{"url": api.url}]
    with trio.fail_after(50):
        seen = await trio.to_thread.run_sync(run_schemathesis, api.url, schema_doc, admin)
    print(sorted(seen.items()))
    answered = {path for path, status in seen if status == 200}
    assert {
        "/collectors/trades",
        "/candles",
        "/order-flow",
        "/volume-profile",
        "/gaps",
        "/metrics",
        "/collectors/status",
        "/debug/tasks",
        "/auth/api-keys",
    } <= answered
