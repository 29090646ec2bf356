"""Who may call what: the role each endpoint needs, and the gate that checks the key from the
request's headers before any byte of its body is read.

| role | may call |
|---|---|
| (none) | the pages and their assets; `/health` and `/metrics` from this machine (not through a proxy) |
| `client` | `/v1/extract`, `/v1/chat/completions`, `/v1/models`, `/v1/requests/{id}` of its own requests |
| `reviewer` | also `/v1/review/next`, `/v1/feedback`, `/v1/stats`, any `/v1/requests/{id}` |
| `admin` | also `/metrics` and `/health` details from other hosts, `/openapi.json` |

A missing, unknown, revoked or expired key is refused with 401, a key without the role with 403
(logged, with the key's id), a key over its rate with 429 — each before the body is read, and on a
connection that is then closed, so an unauthenticated upload costs the gateway nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from swiftpipe.gateway.protocol import ApiError

if TYPE_CHECKING:
    from swiftpipe.gateway.state import Gateway

# (method, path, role): the first match wins; a path ending in "/" matches everything below it.
RULES: tuple[tuple[str, str, str], ...] = (
    ("POST", "/v1/extract", "client"),
    ("POST", "/v1/chat/completions", "client"),
    ("GET", "/v1/models", "client"),
    ("GET", "/v1/requests/", "client"),  # its own requests; a reviewer's: any
    ("GET", "/v1/review/next", "reviewer"),
    ("POST", "/v1/feedback", "reviewer"),
    ("GET", "/v1/stats", "reviewer"),
    ("GET", "/openapi.json", "admin"),
)
LOCAL = ("/health", "/metrics")  # open to this machine; from elsewhere: a key (metrics, health details: admin)


def loopback(scope: dict) -> bool:
    """A request from this machine that no proxy forwarded (a proxy on this machine sets
    X-Forwarded-For or Forwarded: its clients are never taken for local ones)."""
    host = (scope.get("client") or ("",))[0] or ""
    if not (host.startswith(("127.", "::ffff:127.")) or host in ("::1", "localhost")):
        return False
    return not any(name in (b"x-forwarded-for", b"forwarded", b"x-real-ip") for name, _ in scope.get("headers") or [])


def role_needed(method: str, path: str, scope: dict) -> Optional[str]:
    """The role a request needs, or None when it needs no key."""
    if path in LOCAL:
        return None if loopback(scope) else ("admin" if path == "/metrics" else "client")
    for rule_method, rule_path, role in RULES:
        if (path == rule_path or (rule_path.endswith("/") and path.startswith(rule_path))) and method == rule_method:
            return role
    if path.startswith("/v1/") or path == "/openapi.json":
        return "client"  # an unknown endpoint or method: known to key holders only (then 404 or 405)
    return None


def bearer(scope: dict) -> str:
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


def has_body(scope: dict) -> bool:
    headers = dict(scope.get("headers") or [])
    return headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers


class AuthGate:
    """ASGI middleware: authenticate and authorize from the headers, before the body is read; the
    key goes to `scope["state"]["key"]` for the routes."""

    def __init__(self, app, gateway: "Gateway"):
        self.app, self.gw = app, gateway

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        need = role_needed(scope["method"], scope["path"], scope)
        if need is None:
            return await self.app(scope, receive, send)
        close = {"Connection": "close"} if has_body(scope) else {}
        try:
            key = self.gw.key_for(bearer(scope))
            if not key.may(need):
                await self.gw.refuse_role(scope, key, need)
            self.gw.admit(key)  # the rate limit
        except ApiError as exc:
            exc.headers = {**(exc.headers or {}), **close}
            return await exc.response()(scope, receive, send)
        scope.setdefault("state", {})["key"] = key
        await self.app(scope, receive, send)

