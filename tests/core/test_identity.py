"""One spelling of an adapter: what a request may name, and how every answer writes it back."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from loraswap.core.errors import InvalidRequestError
from loraswap.core.identity import AdapterRef, AdapterVersionRef, Version


@pytest.mark.parametrize("text", ["acme/support", "support", "dev.folder-1_x"])
def test_a_name_reads_back_as_written(text: str) -> None:
    assert str(AdapterRef.parse(text)) == text


def test_a_registered_name_has_a_tenant_and_a_dev_name_none() -> None:
    registered, dev = AdapterRef.parse("acme/support"), AdapterRef.parse("Support.v2")
    assert (registered.tenant, registered.name, registered.is_registered) == (
        "acme", "support", True)
    assert (dev.tenant, dev.name, dev.is_registered) == (None, "Support.v2", False)
    assert registered.owned_by("acme") and not registered.owned_by("other")
    assert not dev.owned_by(None)


@pytest.mark.parametrize("text, rule", [
    ("a/b/c", "registered adapters are 'tenant/name'"),
    ("Acme/support", "registered adapters are 'tenant/name'"),
    ("acme/", "registered adapters are 'tenant/name'"),
    ("../etc", "registered adapters are 'tenant/name'"),
    (".hidden", "use letters, digits"),
    ("", "use letters, digits"),
])
def test_a_name_no_adapter_can_have_is_a_400_naming_the_rule(text: str, rule: str) -> None:
    with pytest.raises(InvalidRequestError, match=rule) as raised:
        AdapterRef.parse(text)
    assert repr(text) in str(raised.value)


def test_a_version_ref_reads_back_and_labels_spell_the_adapter_in_full() -> None:
    key = AdapterVersionRef.parse("acme/support@3")
    assert str(key) == "acme/support@3" and key.version.number == 3
    assert key.labels == ("acme", "acme/support", "3")
    assert AdapterVersionRef.parse("dev@5f0-17a3").labels == ("", "dev", "5f0-17a3")
    with pytest.raises(InvalidRequestError, match="names no version"):
        AdapterVersionRef.parse("acme/support")


def test_a_version_is_a_string_in_every_answer_and_a_number_or_string_in_requests() -> None:
    class Body(BaseModel):
        version: Version

    assert Body.model_validate({"version": 2}).model_dump(mode="json") == {"version": "2"}
    assert Body.model_validate({"version": "2"}).model_dump_json() == '{"version":"2"}'
    assert Body.model_validate({"version": "5f0-17a3"}).version.is_number is False
    for bad in (0, -1, 100_000_000, "x y", True, 1.5):
        with pytest.raises(ValueError, match="version"):
            Body.model_validate({"version": bad})
    with pytest.raises(InvalidRequestError, match="not a registry version"):
        _ = Version.tag("5f0-17a3").number
