"""Who may call the server and what they may send: the middleware in front of every route.

``GuardMiddleware`` (outermost) refuses a ``Host`` that does not name this machine (DNS
rebinding: a page on ``evil.example`` whose name is re-pointed at 127.0.0.1 is same-origin to
the browser, but its requests still say ``Host: evil.example``) and an ``Origin`` that is not
allowed (a page on another site can send a ``text/plain`` POST with no CORS preflight; the
browser only hides the answer, the request still runs). ``SafetyMiddleware`` (inside CORS)
checks the API key, that POST bodies are JSON, and the body size.

Clients that are not browsers (curl, the openai/ollama Python clients, node's fetch in the
VS Code extension host) send no ``Origin`` and pass. Refusals are 403, as Ollama's: 421
(misdirected) invites HTTP/2 clients to retry on another connection, and 400 would blame the
syntax.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from dataclasses import dataclass

from .validation import ApiError, error_response

OPEN_PATHS = ("/health",)  # answered without an API key: load balancers and editors probe it
BODY_METHODS = ("POST", "PUT", "PATCH")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


# --- Host --------------------------------------------------------------------------------------
def host_name(header: str) -> str | None:
    """The host of a ``Host`` header, lower case, without port, brackets or a final dot
    (``[::1]:8080`` -> ``::1``); None if it is not a host[:port]."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        host, rest = (value[1:end], value[end + 1:]) if end > 0 else ("", "")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, _, port = value.partition(":")
        rest = ":" + port if _ else ""
        host = host[:-1] if host.endswith(".") else host
        if not _HOST_NAME.fullmatch(host):
            return None
    if rest and not (rest[0] == ":" and rest[1:].isascii() and rest[1:].isdigit()):
        return None
    return host


def _ip(host: str):
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return getattr(ip, "ipv4_mapped", None) or ip


def is_loopback(host: str) -> bool:
    """localhost, a name under .localhost (reserved for loopback by RFC 6761: browsers resolve
    it to 127.0.0.1 themselves and it cannot be registered, so it cannot be rebound),
    127.0.0.0/8 or ::1."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


@dataclass(frozen=True)
class HostPolicy:
    """Loopback names, the names configured with ``--allowed-hosts`` (``*.example.org`` for its
    subdomains, ``*`` for any) and the bind address."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    any: bool = False

    @classmethod
    def from_settings(cls, allowed: list[str], bind: str) -> HostPolicy:
        names = {h.lower().rstrip(".") for h in allowed if not h.startswith("*")}
        if bind not in WILDCARD_BINDS:
            names.add(bind.lower().strip("[]"))
        return cls(frozenset(names), tuple(h[1:].lower() for h in allowed if h.startswith("*.")),
                   "*" in allowed)

    def allows(self, header: str, local_address: str | None) -> bool:
        """``local_address``: the address the connection reached (the ASGI scope's server: an
        IP under uvicorn). A Host naming it is the address the client typed; a rebinding attack
        needs a DNS name."""
        if self.any:
            return True
        host = host_name(header)
        if host is None:
            return False
        if is_loopback(host) or host in self.names or any(map(host.endswith, self.suffixes)):
            return True
        if not local_address:
            return False
        here = local_address.lower()
        return host == here or (_ip(host) is not None and _ip(host) == _ip(here))


# --- Origin ------------------------------------------------------------------------------------
# Ollama also allows, by default, localhost on every port and app://, file://, tauri://,
# vscode-webview:// and vscode-file://. None of them is needed by the clients this server is
# made for (the VS Code extension and Continue call from the extension host, which sends no
# Origin), and each lets more than the user's own client in: any other local web app's page
# (localhost:*), any Electron or Tauri app, any extension's webview including notebook output
# renderers. file:// pages send "Origin: null", as do sandboxed iframes any site can make, so
# "null" is never allowed. A user who wants one adds it with --cors-origins.
def own_origins(ports) -> set[str]:
    """This server's own loopback origins on ``ports``."""
    out = set()
    for port in {p for p in ports if p}:
        suffix = "" if port == 80 else f":{port}"
        out |= {f"http://127.0.0.1{suffix}", f"http://localhost{suffix}", f"http://[::1]{suffix}"}
    return out


@dataclass(frozen=True)
class OriginPolicy:
    """Origins from ``--cors-origins``: exact ``scheme://host[:port]``, ``scheme://*`` for any
    origin of a scheme (``vscode-webview://*``), or ``*``; plus the server's own."""

    exact: frozenset[str] = frozenset()
    schemes: frozenset[str] = frozenset()
    any: bool = False

    @classmethod
    def from_settings(cls, origins: list[str]) -> OriginPolicy:
        return cls(frozenset(o.lower() for o in origins if not o.endswith("://*") and o != "*"),
                   frozenset(o[:-4].lower() for o in origins if o.endswith("://*")),
                   "*" in origins)

    def allows(self, origin: str, ports) -> bool:
        origin = origin.strip().lower().rstrip("/")
        scheme, sep, rest = origin.partition("://")
        if not sep or not rest or origin == "null":
            return False
        return (self.any or origin in self.exact or scheme in self.schemes
                or origin in own_origins(ports))

    def cors_regex(self) -> str | None:
        """For Starlette's CORSMiddleware: the scheme wildcards as one regex."""
        if not self.schemes:
            return None
        return "(" + "|".join(re.escape(s) for s in sorted(self.schemes)) + r")://[^/\s]+"


# --- middleware --------------------------------------------------------------------------------
def _headers(scope) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in scope["headers"]:
        out.setdefault(key.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return out


async def _refuse(scope, receive, send, status: int, message: str, headers=None):
    response = error_response(scope.get("path", ""), ApiError(status, message, headers=headers))
    await response(scope, receive, send)


class GuardMiddleware:
    """403 for a foreign Host or Origin, before anything else (CORS preflights included)."""

    def __init__(self, app, *, hosts: HostPolicy, origins: OriginPolicy, port: int):
        self.app, self.hosts, self.origins, self.port = app, hosts, origins, port

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        server = scope.get("server") or (None, None)
        for host in headers.get("host", []):  # HTTP/1.0 without Host: not a browser, can't rebind
            if not self.hosts.allows(host, server[0]):
                return await _refuse(scope, receive, send, 403, (
                    f"the Host header {host[:100]!r} does not name this server: requests must "
                    "address it as localhost, 127.0.0.1 or [::1] (a guard against DNS "
                    "rebinding); to serve under another name start it with --allowed-hosts "
                    "NAME (or CSOUND_ASSISTANT_ALLOWED_HOSTS)"))
        ports = (self.port, server[1])
        for origin in headers.get("origin", []):
            if not self.origins.allows(origin, ports):
                return await _refuse(scope, receive, send, 403, (
                    f"requests from web pages of origin {origin[:100]!r} are refused: only "
                    "origins listed with --cors-origins (or CSOUND_ASSISTANT_CORS_ORIGINS) may "
                    "call this server; programs that are not browsers send no Origin header"))
        if not headers.get("origin") and "cross-site" in headers.get("sec-fetch-site", []):
            return await _refuse(scope, receive, send, 403, (
                "a browser marked this request as sent by another site (Sec-Fetch-Site: "
                "cross-site); web pages may call this server only from --cors-origins"))
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


def is_json_type(value: str | None) -> bool:
    """``application/json`` or ``application/*+json``, UTF-8 or no charset."""
    if not value:
        return False
    media, *params = (part.strip().lower() for part in value.split(";"))
    kind, _, subtype = media.partition("/")
    if kind != "application" or not (subtype == "json" or subtype.endswith("+json")):
        return False
    for param in params:
        name, _, val = param.partition("=")
        if name.strip() == "charset" and val.strip().strip('"') not in ("utf-8", "utf8"):
            return False
    return True


def _length_within(length: str, limit: int) -> bool:
    return length.isascii() and length.isdigit() and len(length) < 19 and int(length) <= limit


class SafetyMiddleware:
    """API key on every route but /health (401), JSON bodies (415), a body limit (413)."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k: v[-1] for k, v in _headers(scope).items()}
        if self.api_key and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
            return await _refuse(scope, receive, send, 401, (
                "missing or wrong API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'"),
                {"WWW-Authenticate": "Bearer"})
        kind = headers.get("content-type")
        if scope["method"] in BODY_METHODS and not is_json_type(kind):
            got = f"got {kind[:80]!r}" if kind else "none was sent"
            return await _refuse(scope, receive, send, 415, (
                "request bodies must be JSON: send the header 'Content-Type: application/json' "
                f"({got}; UTF-8 only)"))
        length = headers.get("content-length")
        if length is not None and not _length_within(length, self.max_body):
            return await _refuse(scope, receive, send, 413, (
                f"the request body is larger than the limit of {self.max_body} bytes"))
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited_receive, send)

    def _authorized(self, headers: dict) -> bool:
        given = headers.get("x-api-key") or ""
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), self.api_key.encode())
