"""Names that make invalid Job labels are refused, and an s3:// import cannot read the
registry's own bucket (issue 23, finding 8)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loraswap.adapters.staging import stage_from_uri
from loraswap.adapters.store.s3 import S3Store
from loraswap.adapters.validation import ValidationLimits
from loraswap.core.errors import PermissionDeniedError
from loraswap.core.identity import SAFE_NAME

# Kubernetes label values (a run's Job is labelled with its tenant and adapter).
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def test_safe_names_are_valid_label_values() -> None:
    for name in ("acme-", "acme_", "a-", "x" * 62 + "-"):  # old code accepted these
        assert not SAFE_NAME.fullmatch(name)
    for name in ("a", "acme", "acme-2", "a_b", "a" * 63):
        assert SAFE_NAME.fullmatch(name) and LABEL_VALUE.fullmatch(name)
    assert not SAFE_NAME.fullmatch("a" * 64)


def test_an_s3_import_may_not_read_the_registrys_own_bucket(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never contacted
    registry = S3Store("models", "registry", client=object())
    for uri in ("s3://models/registry/adapters/bravo/intent/versions/00000001/",
                "s3://models/registry/", "s3://models/"):
        # Old code: downloaded another tenant's version with the server's credentials.
        with pytest.raises(PermissionDeniedError, match="registry's own store"):
            stage_from_uri(uri, tmp_path / "dest", ValidationLimits(), registry_store=registry)
