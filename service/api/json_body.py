"""Treat ``curl -d '{...}'`` bodies as JSON.

curl's ``-d`` labels every body ``application/x-www-form-urlencoded``, and some clients
send none at all; the API has no form endpoints, so such a body on a ``/v1/`` or
``/admin/`` route is read as the JSON it is. Multipart uploads keep their own type.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

FORM = b"application/x-www-form-urlencoded"
JSON = b"application/json"
JSON_PREFIXES = ("/v1/", "/admin/")


class FormBodyAsJson:
    """ASGI middleware relabelling form-encoded or unlabelled API bodies as JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(JSON_PREFIXES):
            headers = [(n, v) for n, v in scope["headers"] if n != b"content-type"]
            types = [v for n, v in scope["headers"] if n == b"content-type"]
            content_type = types[0] if types else b""
            if not types or content_type.split(b";")[0].strip().lower() == FORM:
                content_type = JSON
            # In place: outer middleware reads what the router writes into this same scope.
            scope["headers"] = [*headers, (b"content-type", content_type)]
        await self.app(scope, receive, send)
