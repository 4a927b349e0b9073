"""`loraswap adapters push` against a real server."""

from __future__ import annotations

from typer.testing import CliRunner

from loraswap.cli import app
from tests.service.api.test_admin_api import ADMIN, ADMIN_HEADERS, create_tenant
from tests.service.conftest import PackageFactory, ServerFactory


def test_push_registers_a_version_and_reports_refusals(
    live_server: ServerFactory, make_package: PackageFactory,
) -> None:
    server = live_server(admin_token=ADMIN, dev_mode=False)
    create_tenant(server, "acme")
    env = {"LORASWAP_URL": server.url, "LORASWAP_ADMIN_TOKEN": ADMIN}
    runner = CliRunner()
    pushed = runner.invoke(app, ["adapters", "push", str(make_package("v1")), "--tenant", "acme",
                                 "--name", "helper"], env=env)
    assert pushed.exit_code == 0, pushed.output
    assert "registered acme/helper version 1: active" in pushed.output
    info = server.client.get("/admin/adapters/acme/helper", headers=ADMIN_HEADERS).json()
    assert info["active_version"] == 1

    broken = make_package("v2")
    (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    refused = runner.invoke(app, ["adapters", "push", str(broken), "--tenant", "acme",
                                  "--name", "helper"], env=env)
    assert refused.exit_code == 1
    assert "(422)" in refused.output and "sha256" in refused.output

    wrong_token = runner.invoke(app, ["adapters", "push", str(make_package("v3")), "--tenant",
                                      "acme", "--name", "helper"],
                                env={**env, "LORASWAP_ADMIN_TOKEN": "x" * 20})
    assert wrong_token.exit_code == 1 and "invalid admin token" in wrong_token.output
