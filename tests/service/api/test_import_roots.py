"""``file://`` imports read only below the configured roots (issue 13, item 13): the store
itself, and any other folder of the server, cannot be imported from."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.service.conftest import PackageFactory, ServerFactory, upload_files


def _import(server_client, tenant: str, name: str, uri: str):  # type: ignore[no-untyped-def]
    return server_client.post(f"/admin/adapters/{tenant}/{name}/versions/import",
                              json={"source_uri": uri})


def test_a_tenants_stored_version_cannot_be_imported_into_another_tenant(
        live_server: ServerFactory, make_package: PackageFactory, tmp_path: Path) -> None:
    roots = tmp_path / "imports"
    roots.mkdir()
    server = live_server(import_roots=[roots])
    client = server.client
    for tenant in ("acme", "evil"):
        assert client.post("/admin/tenants", json={"name": tenant}).status_code == 201
    uploaded = client.post("/admin/adapters/acme/secret/versions",
                           files=upload_files(make_package("secret")))
    assert uploaded.status_code == 201, uploaded.text
    stored = tmp_path / "store" / "adapters" / "acme" / "secret" / "versions" / "00000001"
    assert (stored / "loraswap.json").is_file()

    response = _import(client, "evil", "stolen", stored.as_uri())
    assert response.status_code == 403, response.text
    assert "LORASWAP_IMPORT_ROOTS" in response.json()["error"]["message"]
    # A link inside a root that points out of it is no way around the rule.
    (roots / "link").symlink_to(stored, target_is_directory=True)
    assert _import(client, "evil", "stolen", (roots / "link").as_uri()).status_code == 403
    assert client.get("/admin/adapters/evil/stolen").status_code == 404

    shutil.copytree(make_package("allowed"), roots / "allowed")
    imported = _import(client, "evil", "mine", (roots / "allowed").as_uri())
    assert imported.status_code == 201, imported.text


def test_file_imports_are_off_without_import_roots(live_server: ServerFactory,
                                                  make_package: PackageFactory) -> None:
    server = live_server()
    assert server.client.post("/admin/tenants", json={"name": "acme"}).status_code == 201
    response = _import(server.client, "acme", "chat", make_package("chat").as_uri())
    assert response.status_code == 403, response.text
    assert "LORASWAP_IMPORT_ROOTS" in response.json()["error"]["message"]
