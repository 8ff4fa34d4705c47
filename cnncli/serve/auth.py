"""API keys for ``cnncli serve``: the key comes from ``--api-key-file FILE`` or ``CNNCLI_API_KEY`` (the file wins),
and every request but the health probes and the static page must carry it, as ``Authorization: Bearer KEY`` or
``X-API-Key: KEY``; it is compared in constant time (:func:`hmac.compare_digest`) and a request without it gets a
JSON 401. Open without a key: ``/healthz``, ``/readyz``, ``/v2/health/live`` and ``/v2/health/ready`` (what
load balancers and KServe's probes call, which send no headers), and ``/``, ``/docs``, ``/openapi.json`` (static:
the page asks for the key and sends it with each call; no model data is in them).

Listening on an address other than loopback without a key is refused in one sentence unless ``--no-auth`` says
so explicitly (:func:`resolve_api_key`).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from starlette.requests import Request

from cnncli.core.errors import UsageError
from cnncli.serve.errors import ServiceError

ENV_KEY = "CNNCLI_API_KEY"
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
MAX_KEY_FILE_BYTES = 4096
MIN_KEY_CHARS = 16


def is_loopback(host: str) -> bool:
    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to anything


def _checked_key(text: str, where: str) -> str:
    key = text.strip()
    if not key:
        raise UsageError(f"{where} is empty; put one API key in it (for example: python -c "
                         "'import secrets; print(secrets.token_urlsafe(32))').")
    if "\n" in key or "\r" in key:
        raise UsageError(f"{where} holds more than one line; it must hold exactly one API key.")
    if any(not (33 <= ord(c) <= 126) for c in key):
        raise UsageError(f"{where}: the API key must be printable ASCII without spaces (it travels in an HTTP "
                         "header).")
    if len(key) < MIN_KEY_CHARS:
        raise UsageError(f"{where}: the API key has {len(key)} characters; use at least {MIN_KEY_CHARS} (for "
                         "example: python -c 'import secrets; print(secrets.token_urlsafe(32))').")
    return key


def read_key_file(path: Path) -> str:
    """The one API key in ``path`` (a regular file of one line, at most 4 KB), or UsageError saying what is wrong."""
    where = f"--api-key-file {path}"
    if not path.exists():
        raise UsageError(f"{where} does not exist.")
    if not path.is_file():
        raise UsageError(f"{where} is not a regular file.")
    size = path.stat().st_size
    if size > MAX_KEY_FILE_BYTES:
        raise UsageError(f"{where} is {size} bytes; an API key file holds one key of at most "
                         f"{MAX_KEY_FILE_BYTES} bytes.")
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"{where}: the API key must be printable ASCII without spaces.") from None
    except OSError as exc:
        raise UsageError(f"{where} cannot be read ({exc.strerror or exc}).") from None
    return _checked_key(text, where)


def resolve_api_key(key_file: Path | None, host: str, no_auth: bool, env: dict | None = None) -> str | None:
    """The key the service requires (None: no auth), or UsageError for an unsafe or contradictory setting."""
    env = os.environ if env is None else env
    if key_file is not None:
        key = read_key_file(key_file)
    elif env.get(ENV_KEY):
        key = _checked_key(env[ENV_KEY], ENV_KEY)
    else:
        key = None
    if no_auth and key is not None:
        raise UsageError(f"--no-auth contradicts the API key given ({'--api-key-file' if key_file else ENV_KEY}); "
                         "drop one of them.")
    if key is None and not no_auth and not is_loopback(host):
        raise UsageError(f"--host {host} opens the service to the network without an API key; give one with "
                         f"--api-key-file FILE (or {ENV_KEY}), or say --no-auth to serve it open.")
    return key


def presented_key(request: Request) -> str | None:
    """The key a request carries: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key")


def key_guard(api_key: str | None):
    """A FastAPI dependency for every route: 401 JSON unless the request carries ``api_key`` (or the path is open).
    With a key, the OpenAPI schema declares both ways to send it, so /docs has an Authorize button."""
    from fastapi import Depends
    from fastapi.security import APIKeyHeader, HTTPBearer

    expected = api_key.encode() if api_key else None
    if expected is None:
        async def open_service() -> None:
            return None

        return open_service
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")

    async def require_key(request: Request, _bearer=Depends(bearer), _header=Depends(header)) -> None:
        if request.url.path in OPEN_PATHS:
            return
        given = presented_key(request)
        if given is None:
            raise ServiceError(401, "this service needs an API key: send Authorization: Bearer KEY or X-API-Key: "
                                    "KEY.", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
            raise ServiceError(401, "the API key is not valid.", {"WWW-Authenticate": "Bearer"})

    return require_key
