"""The live dashboard (`GET /dashboard`): three small static files served beside the JSON API.

The page is hand-written HTML, CSS and JavaScript drawing SVG itself (no third-party code, no build step,
nothing from a CDN), so it works offline and is reviewed like the rest of the code. It reads only the
public JSON routes, with the same auth rules as any client: the files themselves need no key (they hold no
data); a read key the user types is kept in the tab's `sessionStorage` and sent as
`Authorization: Bearer <key>`, never in a URL. The files are package data in `marketflow/api/dashboard/`.

Every answer carries a strict Content-Security-Policy (`default-src 'self'`: no inline script, no other
origin) and `Cache-Control: no-cache` with an ETag, so a browser revalidates cheaply and never runs a
stale script after an upgrade.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from quart import Blueprint, Response, request
from quart_schema import hide
from werkzeug.exceptions import NotFound

__all__ = ["ASSETS", "CONTENT_SECURITY_POLICY", "blueprint"]

blueprint = Blueprint("dashboard", __name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
)
"""Scripts, styles, images and fetches from this origin only; nothing inline, no framing, no form posts."""

ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
"""The files of `marketflow/api/dashboard/` and their content types."""


@cache
def _load(name: str) -> tuple[bytes, str]:
    """A file's bytes and its strong ETag, unquoted (read once: package data is fixed while we run)."""
    body = resources.files("marketflow.api").joinpath("dashboard", name).read_bytes()
    return body, hashlib.sha256(body).hexdigest()[:32]


def _serve(name: str) -> Response:
    content_type = ASSETS.get(name)
    if content_type is None:
        raise NotFound()
    body, tag = _load(name)
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
        "ETag": f'"{tag}"',
    }
    if request.if_none_match.contains(tag):
        return Response(b"", status=304, headers=headers)
    return Response(body, status=200, content_type=content_type, headers=headers)


@blueprint.get("/dashboard")
@hide
async def dashboard() -> Response:
    """The dashboard page (open to everyone: it holds no data; the data calls carry the key)."""
    return _serve("index.html")


@blueprint.get("/dashboard/<name>")
@hide
async def dashboard_asset(name: str) -> Response:
    """The page's script, style sheet and icon."""
    if name == "index.html":
        raise NotFound()
    return _serve(name)
