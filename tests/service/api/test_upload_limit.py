"""LORASWAP_MAX_UPLOAD_BYTES over HTTP: a larger upload is 413 and stores nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import PackageFactory, ServerFactory, upload_files

ADMIN = "adm-" + "6" * 40
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
LIMIT = 16 * 1024


def _in_pieces(body: bytes) -> Iterator[bytes]:
    """The body without a Content-Length (chunked), as a streaming client sends it."""
    for start in range(0, len(body), 1024):
        yield body[start:start + 1024]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_upload_over_the_limit_is_413_and_stores_nothing(
        live_server: ServerFactory, make_package: PackageFactory, tmp_path: Path,
        framing: str) -> None:
    server = live_server(admin_token=ADMIN, dev_mode=False, max_upload_bytes=LIMIT)
    created = server.client.post("/admin/tenants", headers=ADMIN_HEADERS, json={"name": "acme"})
    assert created.status_code == 201, created.text
    package = make_package("big", rank=16)
    small = make_package("small", rank=1, targets=("q_proj",))
    # Guards: one package is really over the limit, the other well within it.
    assert _size(package) > LIMIT and _size(small) < LIMIT // 2
    request = httpx.Request("POST", f"{server.url}/admin/adapters/acme/helper/versions",
                            headers=ADMIN_HEADERS, files=upload_files(package))
    body = request.read()
    headers = dict(request.headers)
    if framing == "chunked":
        headers.pop("content-length")
        response = httpx.post(request.url, headers=headers, content=_in_pieces(body),
                              timeout=60)
    else:
        response = httpx.post(request.url, headers=headers, content=body, timeout=60)
    assert response.status_code == 413, response.text
    assert str(LIMIT) in response.text or "LORASWAP_MAX_UPLOAD_BYTES" in response.text
    listed = server.client.get("/admin/adapters/acme/helper", headers=ADMIN_HEADERS)
    assert listed.status_code == 404, listed.text
    # The package within the limit is accepted on the same server.
    ok = server.client.post("/admin/adapters/acme/helper/versions", headers=ADMIN_HEADERS,
                            files=upload_files(small))
    assert ok.status_code == 201, ok.text


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())
