"""Treat ``curl -d '{...}'`` bodies as JSON.

curl's ``-d`` labels every body ``application/x-www-form-urlencoded``; the API has no form
endpoints, so such a body on a ``/v1/`` or ``/admin/`` route is read as the JSON it is.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

FORM = b"application/x-www-form-urlencoded"
JSON_PREFIXES = ("/v1/", "/admin/")


class FormBodyAsJson:
    """ASGI middleware relabelling form-encoded API bodies as JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(JSON_PREFIXES):
            headers = [
                (name, b"application/json" if name == b"content-type"
                 and value.split(b";")[0].strip().lower() == FORM else value)
                for name, value in scope["headers"]
            ]
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)
