"""A plain PEFT import has no profile.json: no drift gauges, and the admin view says how to
get them; an uploaded reference file is profiled by ``loraswap profile run`` in its own
process, and the gauges appear. Bad uploads get 4xx answers naming the problem."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import httpx
import pytest

from loraswap.jobs.profile_jobs import ProfileJob
from tests.peft_adapters import lora_config, save_peft_adapter, upload_parts
from tests.service.conftest import LiveServer, ServerFactory, upload_files
from tests.service.drift.test_capture_feedback_api import (
    ADMIN,
    ADMIN_HEADERS,
    TEXTS,
    classifier_package,
    create_tenant,
    metric_lines,
    predict,
)
from tests.utils.polling import wait_for

LABELS = ["negative", "positive"]
UPLOAD = "/admin/adapters/acme/mood/versions/1/reference"


@pytest.fixture
def server(live_server: ServerFactory) -> LiveServer:
    return live_server(admin_token=ADMIN, dev_mode=False, drift_enabled=True,
                       drift_min_samples=4, drift_window_size=50,
                       drift_score_interval_seconds=0.1, drift_capture_flush_seconds=600,
                       drift_reference_refresh_seconds=0.5,
                       max_upload_bytes=1 << 19)


def register_plain(server: LiveServer, tiny_base_dir: Path, tmp_path: Path) -> None:
    """A plain PEFT seq-cls folder (no loraswap.json, no profile.json) as acme/mood@1."""
    folder = save_peft_adapter(tiny_base_dir, tmp_path / "mood", lora_config("SEQ_CLS"),
                               seed=3, num_labels=len(LABELS))
    response = server.client.post("/admin/adapters/acme/mood/versions", headers=ADMIN_HEADERS,
                                  files=upload_parts(folder),
                                  data={"task": "seq-cls", "labels": LABELS})
    assert response.status_code == 201, response.text


def reference_csv(rows: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["review", "stars"])
    writer.writerows([f"{TEXTS[i % len(TEXTS)]} {i}", 5] for i in range(rows))
    return out.getvalue().encode()


def put(server: LiveServer, path: str, body: bytes, **params: Any) -> httpx.Response:
    return server.client.put(path, headers=ADMIN_HEADERS, content=body, params=params)


def mood_scores(server: LiveServer) -> set[str]:
    return {line.split('signal="')[1].split('"')[0]
            for line in metric_lines(server, "loraswap_drift_score")
            if 'adapter="acme/mood"' in line}


def profile_log(server: LiveServer, job_id: str) -> str:
    log = server.settings.run_log_dir / f"profile-{job_id}.log"
    return log.read_text()[-3000:] if log.is_file() else "(no log)"


def test_a_plain_peft_import_gets_gauges_once_its_reference_is_profiled(
        server: LiveServer, tiny_base_dir: Path, tmp_path: Path) -> None:
    key = create_tenant(server, "acme", "off")
    register_plain(server, tiny_base_dir, tmp_path)
    predict(server, key, "acme/mood")

    # Tracked, but every signal absent (not zero), and the view says how to fix it.
    wait_for(lambda: [line for line in metric_lines(server, "loraswap_drift_window_samples")
                      if 'adapter="acme/mood"' in line])
    view = server.client.get("/admin/drift/acme/mood", headers=ADMIN_HEADERS).json()
    assert view["tracked"] is True and view["window_samples"] == len(TEXTS)
    assert set(view["absent_signals"]) >= {"input_length", "confidence", "predicted_label",
                                           "embedding"}
    hint = ("no profile.json: upload a reference dataset with PUT "
            "/admin/adapters/acme/mood/versions/1/reference/{file}")
    assert set(view["absent_signals"].values()) == {hint}
    assert mood_scores(server) == set()
    status = server.client.get("/admin/adapters/acme/mood/versions/1/profile",
                               headers=ADMIN_HEADERS).json()
    assert status["profile"] is None and status["job"] is None

    answer = put(server, f"{UPLOAD}/reviews.csv", reference_csv(120), text_column="review")
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["status"] == "queued" and job["rows"]["in_file"] == 120
    assert job["launcher"] == "local"

    def finished() -> dict[str, Any]:
        found: dict[str, Any] = server.client.get(
            "/admin/adapters/acme/mood/versions/1/profile", headers=ADMIN_HEADERS).json()
        return found if found["job"]["status"] in ("done", "failed") else {}

    status = wait_for(finished, timeout=180, what="the profiling job",
                      on_fail=lambda: profile_log(server, job["id"]))
    assert status["job"]["status"] == "done", profile_log(server, job["id"])
    assert "at nice 19" in profile_log(server, job["id"])  # the lowest CPU priority
    assert status["profile"] == "uploaded"
    assert "predictions" in status["job"]["labels_from"]

    # The monitor re-reads the reference: the window's inputs are scored at once.
    wait_for(lambda: {"input_length", "predicted_label", "confidence"} <= mood_scores(server),
             what="the mood gauges")
    predict(server, key, "acme/mood")  # embeddings start again on the new reference's basis
    wait_for(lambda: "embedding" in mood_scores(server), what="the embedding gauge")
    view = server.client.get("/admin/drift/acme/mood", headers=ADMIN_HEADERS).json()
    assert not {"input_length", "confidence", "predicted_label",
                "embedding"} & set(view["absent_signals"])


class HeldLauncher:
    """Records jobs without running them (the job stays queued)."""

    name = "held"

    def __init__(self, fail: bool = False) -> None:
        self.jobs: list[ProfileJob] = []
        self.fail = fail

    def launch_profile(self, job: ProfileJob) -> str:
        if self.fail:
            raise OSError("no process slots")
        self.jobs.append(job)
        return "held"


def message(response: httpx.Response) -> str:
    text: str = response.json()["error"]["message"]
    return text


def test_bad_uploads_are_refused_naming_the_problem(
        server: LiveServer, tiny_base_dir: Path, tmp_path: Path) -> None:
    create_tenant(server, "acme", "off")
    register_plain(server, tiny_base_dir, tmp_path)
    launcher = HeldLauncher()
    server.app.state.loraswap.components.profiles.launcher = launcher
    good = b"text\ngreat movie\nboring\n"

    assert server.client.put(f"{UPLOAD}/r.csv", content=good).status_code == 401
    assert put(server, f"{UPLOAD}/r.csv", good).status_code == 202
    for path in ("/admin/adapters/acme/nope/versions/1/reference/r.csv",
                 "/admin/adapters/other/mood/versions/1/reference/r.csv",
                 "/admin/adapters/acme/mood/versions/2/reference/r.csv"):
        assert put(server, path, good).status_code == 404, path
    assert server.client.get("/admin/adapters/acme/mood/versions/2/profile",
                             headers=ADMIN_HEADERS).status_code == 404

    # One job per version at a time.
    busy = put(server, f"{UPLOAD}/r.csv", good)
    assert busy.status_code == 409 and "is queued" in message(busy)
    server.app.state.loraswap.components.profiles.jobs.update(
        launcher.jobs[0], lambda job: setattr(job, "status", "failed"))

    cases: list[tuple[str, bytes, dict[str, str], str]] = [
        ("r.xlsx", good, {}, "file type '.xlsx' is not supported"),
        ("r.parquet", b"not a parquet file", {}, "cannot read r.parquet as PARQUET"),
        ("r.csv", b"text\n", {}, "r.csv holds no rows"),
        ("r.jsonl", b"", {}, "r.jsonl holds no rows (the file is empty)"),
        ("r.json", b"{not json", {}, "cannot read r.json as JSON"),
        ("r.csv", b"review\ngreat\n", {}, "r.csv has no column 'text' (columns: 'review')"),
        ("r.csv", good, {"label_column": "stars"}, "r.csv has no column 'stars'"),
        ("r.csv", b"text,label\ngreat,meh\n", {},
         "column 'label' holds ['meh'], which are not labels of the adapter"),
        ("r.jsonl", b'{"text": "  "}\n{"text": null}\n', {},
         "r.jsonl holds no row with a non-empty 'text'"),
    ]
    for name, body, params, expected in cases:
        response = put(server, f"{UPLOAD}/{name}", body, **params)
        assert response.status_code == 400, (name, response.text)
        assert expected in message(response), (name, message(response))
    too_big = put(server, f"{UPLOAD}/r.csv", b"text\n" + b"x" * (1 << 19))
    assert too_big.status_code == 413 and "LORASWAP_MAX_UPLOAD_BYTES" in message(too_big)

    # A launcher that fails: the job is recorded as failed, with why.
    server.app.state.loraswap.components.profiles.launcher = HeldLauncher(fail=True)
    failed = put(server, f"{UPLOAD}/r.csv", good)
    assert failed.status_code == 202 and failed.json()["status"] == "failed"
    assert "launch failed: no process slots" in failed.json()["reason"]
    view = server.client.get("/admin/adapters/acme/mood/versions/1/profile",
                             headers=ADMIN_HEADERS).json()
    assert view["job"]["id"] == failed.json()["id"] and view["profile"] is None


def test_a_package_with_its_own_profile_is_refused(
        server: LiveServer, tiny_base_dir: Path, tmp_path: Path) -> None:
    create_tenant(server, "acme", "off")
    package = classifier_package(tiny_base_dir, tmp_path / "pkg", seed=1)
    response = server.client.post("/admin/adapters/acme/mood/versions", headers=ADMIN_HEADERS,
                                  files=upload_files(package))
    assert response.status_code == 201, response.text
    refused = put(server, f"{UPLOAD}/r.csv", b"text\ngreat\n")
    assert refused.status_code == 409
    assert "has its own profile.json" in message(refused)
    status = server.client.get("/admin/adapters/acme/mood/versions/1/profile",
                               headers=ADMIN_HEADERS).json()
    assert status["profile"] == "package" and status["job"] is None
