"""`loraswap adapters push` against a real server."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from loraswap.cli import app
from tests.peft_adapters import lora_config, peft_text, save_peft_adapter, served_text
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
    assert info["active_version"] == "1"

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


def test_push_registers_a_plain_peft_folder_that_serves_like_peft(
    live_server: ServerFactory, tiny_base_dir: Path, tmp_path: Path,
) -> None:
    """End to end: what PEFT saved (README.md included), pushed as it is, served as PEFT."""
    server = live_server(admin_token=ADMIN, dev_mode=False)
    key = create_tenant(server, "acme")
    folder = save_peft_adapter(tiny_base_dir, tmp_path / "trained-elsewhere",
                               lora_config(use_rslora=True, targets=("q_proj", "up_proj")),
                               seed=5, keep_readme=True)
    env = {"LORASWAP_URL": server.url, "LORASWAP_ADMIN_TOKEN": ADMIN}
    pushed = CliRunner().invoke(app, ["adapters", "push", str(folder), "--tenant", "acme",
                                      "--name", "imported"], env=env)
    assert pushed.exit_code == 0, pushed.output
    assert "registered acme/imported version 1: active" in pushed.output
    assert "inferred task: causal-lm: from adapter_config.json task_type 'CAUSAL_LM'" in (
        pushed.output)
    server.client.headers["Authorization"] = f"Bearer {key}"
    assert served_text(server, "acme/imported") == peft_text(tiny_base_dir, folder)
