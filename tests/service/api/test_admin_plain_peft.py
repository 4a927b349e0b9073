"""Plain PEFT folders through the admin API: registered with what was inferred, served equal
to PEFT (plain LoRA, rsLoRA, a seq-cls head), or refused with a 422 naming the option."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from peft import LoHaConfig, PeftModel
from transformers import AutoTokenizer

from loraswap.adapters.store import open_store
from tests.adapters.conftest import snapshot
from tests.peft_adapters import (
    PROMPT,
    edit_config,
    load_tiny,
    lora_config,
    peft_text,
    save_peft_adapter,
    served_text,
    upload_parts,
)
from tests.service.api.test_admin_api import ADMIN, ADMIN_HEADERS, create_tenant
from tests.service.conftest import LiveServer, ServerFactory


@pytest.fixture
def server(live_server: ServerFactory, tmp_path: Path) -> LiveServer:
    """A production-mode server with tenant ``acme``; the client carries acme's key.
    ``file://`` imports may read below ``tmp_path``."""
    server = live_server(admin_token=ADMIN, dev_mode=False, import_roots=[tmp_path])
    key = create_tenant(server, "acme")
    server.client.headers["Authorization"] = f"Bearer {key}"
    return server


def upload(server: LiveServer, name: str, folder: Path, **form: Any) -> httpx.Response:
    """POST the PEFT folder's two files as a new version of ``acme/name``."""
    return server.client.post(f"/admin/adapters/acme/{name}/versions", headers=ADMIN_HEADERS,
                              files=upload_parts(folder), data=form)


def test_plain_lora_folder_registers_and_serves_like_peft(
    server: LiveServer, tiny_base_dir: Path, tmp_path: Path,
) -> None:
    folder = save_peft_adapter(tiny_base_dir, tmp_path / "chat", lora_config(), seed=1)
    response = upload(server, "chat", folder)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["task"] == "causal-lm" and body["version"] == "1"
    assert body["inferred"]["task"] == "causal-lm: from adapter_config.json task_type 'CAUSAL_LM'"
    listed = server.client.get("/admin/adapters/acme/chat", headers=ADMIN_HEADERS).json()
    assert listed["versions"][0]["inferred"] == body["inferred"]
    served = served_text(server, "acme/chat")
    assert served == peft_text(tiny_base_dir, folder)
    assert served != served_text(server, None)  # the adapter is really applied


def test_rslora_is_served_with_alpha_over_sqrt_r(
    server: LiveServer, tiny_base_dir: Path, tmp_path: Path,
) -> None:
    config = lora_config(rank=16, targets=("q_proj", "v_proj", "down_proj"), use_rslora=True)
    folder = save_peft_adapter(tiny_base_dir, tmp_path / "rs", config, seed=2)
    plain = edit_config(save_peft_adapter(tiny_base_dir, tmp_path / "plain", config, seed=2),
                        use_rslora=False)
    # Same weights, scaling 32/4 instead of 32/16: the test can tell the two apart.
    assert peft_text(tiny_base_dir, folder) != peft_text(tiny_base_dir, plain)
    response = upload(server, "rs", folder)
    assert response.status_code == 201, response.text
    assert "use_rslora" in response.json()["inferred"]["lora"]
    assert served_text(server, "acme/rs") == peft_text(tiny_base_dir, folder)


def test_seq_cls_folder_takes_labels_from_the_form_and_matches_peft(
    server: LiveServer, tiny_base_dir: Path, tmp_path: Path,
) -> None:
    folder = save_peft_adapter(tiny_base_dir, tmp_path / "cls", lora_config("SEQ_CLS"),
                               seed=3, num_labels=3)
    missing = upload(server, "mood", folder)
    assert missing.status_code == 422
    assert "needs a non-empty labels list" in missing.json()["error"]["message"]
    labels = ["sad", "calm", "glad"]
    response = upload(server, "mood", folder, labels=labels, task="seq-cls")
    assert response.status_code == 201, response.text
    assert response.json()["labels"] == labels and response.json()["task"] == "seq-cls"
    answer = server.client.post("/v1/predict", json={"adapter": "acme/mood", "inputs": PROMPT})
    assert answer.status_code == 200, answer.text
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    model = PeftModel.from_pretrained(load_tiny(tiny_base_dir, "SEQ_CLS", 3), folder).eval()
    with torch.no_grad():
        logits = model(**tokenizer(PROMPT, return_tensors="pt")).logits[0]
    expected = torch.softmax(logits.float(), -1)
    scores = answer.json()["outputs"][0]["scores"]
    torch.testing.assert_close(torch.tensor([scores[label] for label in labels]), expected,
                               atol=1e-5, rtol=1e-4)


def test_the_import_route_takes_task_and_labels_in_its_body(
    server: LiveServer, tiny_base_dir: Path, tmp_path: Path,
) -> None:
    folder = save_peft_adapter(tiny_base_dir, tmp_path / "tok", lora_config("TOKEN_CLS"),
                               seed=4, num_labels=2)
    response = server.client.post("/admin/adapters/acme/tags/versions/import",
                                  headers=ADMIN_HEADERS, json={
                                      "source_uri": folder.as_uri(), "labels": ["O", "B-X"]})
    assert response.status_code == 201, response.text
    assert response.json()["task"] == "token-cls" and response.json()["labels"] == ["O", "B-X"]
    assert "task_type 'TOKEN_CLS'" in response.json()["inferred"]["task"]


@pytest.mark.parametrize(("shape", "make", "match"), [
    ("dora", lambda base, dest: save_peft_adapter(base, dest, lora_config(use_dora=True)),
     "use_dora=True is not supported"),
    ("loha", lambda base, dest: save_peft_adapter(
        base, dest, LoHaConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj"])),
     "peft_type='LOHA'"),
    ("embeddings saved", lambda base, dest: save_peft_adapter(
        base, dest, lora_config(modules_to_save=["embed_tokens"])),
     "modules_to_save=.*embed_tokens would replace base-model weights"),
    ("layer replication", lambda base, dest: save_peft_adapter(
        base, dest, lora_config(layer_replication=[[0, 2], [1, 2]])), "layer_replication="),
    ("other base", lambda base, dest: edit_config(
        save_peft_adapter(base, dest, lora_config()), base_model_name_or_path="org/Other-7B"),
     "base_model_name_or_path 'org/Other-7B' is not the served base"),
])
def test_unsupported_shapes_get_a_422_naming_the_option_and_store_nothing(
    server: LiveServer, tiny_base_dir: Path, tmp_path: Path, shape: str, make: Any,
    match: str,
) -> None:
    assert upload(server, "kept", save_peft_adapter(tiny_base_dir, tmp_path / "ok",
                                                    lora_config())).status_code == 201
    store = open_store(server.settings.store_uri)
    before = snapshot(store)
    response = upload(server, "chat", make(tiny_base_dir, tmp_path / "bad"))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "adapter_incompatible"
    assert re.search(match, response.json()["error"]["message"]), response.text
    assert snapshot(store) == before
