"""The gate every API request passes before its body is read.

FastAPI reads (and for uploads, spools to disk) a request body before it runs the route's
dependencies, so a check in a dependency comes after an unauthenticated client could send
gigabytes. Routes of the inference and admin APIs are therefore built with a route class
that runs :class:`RequestGate` first: in dev mode the Host and Origin must be this machine
(no web page can drive an open ``/admin``), a JSON route takes only a JSON body, the caller
is authenticated, and the body is capped while it streams in, chunked or not. Each route
class also declares the error shape of its API family (:class:`ErrorFormat`).
"""

from __future__ import annotations

import asyncio
import email.message
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar
from urllib.parse import urlsplit

from fastapi import Request, Response
from fastapi.params import Form
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive

from loraswap.core.errors import PermissionDeniedError
from loraswap.service.api.errors import ErrorFormat
from loraswap.service.auth import Authenticator, check_admin_token, check_webhook_token

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
MULTIPART_OVERHEAD = 1 << 20
"""Bytes of multipart framing allowed on top of ``LORASWAP_MAX_UPLOAD_BYTES``."""


class Access(StrEnum):
    """Who may call a route."""

    OPEN = "open"
    TENANT = "tenant"
    ADMIN = "admin"
    WEBHOOK = "webhook"  # the retrain webhook's own token, or the admin token


@dataclass(frozen=True)
class RequestGate:
    """Checks run before a body is read (see the module docstring)."""

    authenticator: Authenticator
    admin_token: str | None
    dev_hosts: frozenset[str] | None  # None: no Host check (production has tokens)
    max_json_bytes: int
    max_upload_bytes: int
    webhook_token: str | None = None  # LORASWAP_RETRAIN_WEBHOOK_TOKEN

    async def admit(self, request: Request, *, access: Access, json_body: bool) -> Request:
        """The request to hand on (its body capped), after every check passed."""
        if self.dev_hosts is not None:
            _check_origin(request, self.dev_hosts)
        if json_body:
            _check_json(request)
        if access is Access.TENANT:
            token = _bearer(request)
            # A tenant lookup may read the store: off the event loop.
            request.state.tenant = await asyncio.to_thread(self.authenticator.authenticate,
                                                           token)
        elif access is Access.ADMIN:
            check_admin_token(self.admin_token, _bearer(request))
        elif access is Access.WEBHOOK:
            check_webhook_token(self.admin_token, self.webhook_token, _bearer(request))
        if json_body:
            limit, setting = self.max_json_bytes, "LORASWAP_MAX_REQUEST_BYTES"
        else:
            limit = self.max_upload_bytes + MULTIPART_OVERHEAD
            setting = "LORASWAP_MAX_UPLOAD_BYTES plus 1 MiB of multipart framing"
        return Request(request.scope, _capped(request, limit, setting))


def _check_origin(request: Request, allowed: frozenset[str]) -> None:
    host = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
    if host not in allowed:
        raise PermissionDeniedError(
            f"Host {host!r} is refused in dev mode: the API is open, so it answers only "
            "requests addressed to this machine (localhost, 127.0.0.1, ::1)")
    origin = request.headers.get("origin")
    if origin is not None and (urlsplit(origin).hostname or "") not in allowed:
        raise PermissionDeniedError(
            f"Origin {origin!r} is refused in dev mode: web pages of other sites may not "
            "call this open API")


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _check_json(request: Request) -> None:
    if request.method in ("GET", "HEAD", "DELETE"):
        return
    value = request.headers.get("content-type")
    if value is None:
        if request.headers.get("content-length", "0") == "0" and \
                "transfer-encoding" not in request.headers:
            return  # no body at all
        # A body without a type is what a cross-site "simple" request can send: refused.
        raise HTTPException(415, "the request has no Content-Type: send the body as JSON "
                                 "with 'Content-Type: application/json'")
    message = email.message.Message()
    message["content-type"] = value
    subtype = message.get_content_subtype()
    if message.get_content_maintype() != "application" or not (
            subtype == "json" or subtype.endswith("+json")):
        raise HTTPException(415, f"Content-Type {value!r} is not accepted: send the body as "
                                 "JSON with 'Content-Type: application/json'")


def _capped(request: Request, limit: int, setting: str) -> Receive:
    """``request``'s receive channel, failing with 413 once the body passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the request body has {declared} bytes, more than the "
                                 f"limit of {limit} ({setting})")
    received = 0
    receive = request.receive

    async def capped() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, f"the request body is larger than the limit of "
                                         f"{limit} bytes ({setting})")
        return message

    return capped


def dev_hosts(dev_mode_open: bool, bind_host: str) -> frozenset[str] | None:
    """Hosts an open (dev mode) API answers: loopback names and the bound address."""
    if not dev_mode_open:
        return None
    extra = {bind_host} if bind_host not in ("0.0.0.0", "::", "") else set()
    return LOOPBACK_HOSTS | extra


class GatedRoute(APIRoute):
    """A route whose requests pass the app's :class:`RequestGate` before the body is read."""

    access: ClassVar[Access] = Access.OPEN
    error_format: ClassVar[ErrorFormat] = ErrorFormat.NATIVE
    raw_upload: ClassVar[bool] = False  # the body is a file, streamed by the route itself

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The FastAPI handler, behind the gate."""
        handler = super().get_route_handler()
        # Only a form route (an upload) takes a large body; every other route a small one.
        form = self.body_field is not None and isinstance(self.body_field.field_info, Form)
        json_body = not (form or self.raw_upload)
        access = self.access

        async def gated(request: Request) -> Response:
            gate: RequestGate = request.app.state.loraswap.gate
            return await handler(await gate.admit(request, access=access, json_body=json_body))

        return gated


class NativeRoute(GatedRoute):
    """``/v1/predict`` and the native API: tenant key, native error bodies."""

    access = Access.TENANT


class OpenAIRoute(GatedRoute):
    """The OpenAI-compatible API: tenant key, OpenAI error bodies."""

    access = Access.TENANT
    error_format = ErrorFormat.OPENAI


class AdminRoute(GatedRoute):
    """``/admin``: the admin token."""

    access = Access.ADMIN


class WebhookRoute(GatedRoute):
    """``POST /admin/retrain``: the webhook token (Alertmanager's), or the admin token."""

    access = Access.WEBHOOK


class AdminUploadRoute(AdminRoute):
    """An ``/admin`` route whose body is a file of any type, up to the upload limit."""

    raw_upload = True
