"""Who an adapter is, spelled one way: :class:`AdapterRef`, :class:`Version` and their pair.

Every layer passes these objects along; text is parsed once, at the edge, by
:meth:`AdapterRef.parse` / :meth:`AdapterVersionRef.parse`, and written back by ``str()``:

* ``tenant/name``: an adapter registered by a tenant (each part a :data:`SAFE_NAME`);
* ``name``: an adapter of the development folder (``LORASWAP_ADAPTER_DIR``), no tenant;
* ``…@version``: one version of it.

A version is a :class:`Version`: the registry's number (``"3"``) or, for a development
folder, a tag derived from its weights file (``"5f0-17a3…"``). It is a string wherever a
user sees it (``adapter_version`` of ``/v1/predict``, ``version`` of the admin API,
Prometheus labels), so every answer carries the same type; :attr:`Version.number` gives the
registry's integer back where the store layout needs one.

Metric and alert labels use the same spelling: ``adapter`` is always ``tenant/name`` (beside
a ``tenant`` label for grouping), never the bare name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from loraswap.core.errors import InvalidRequestError

# Tenant and registered adapter names: one safe path segment, usable in URLs, object keys
# and labels.
# Also a valid Kubernetes label value (a run's Job carries the tenant and adapter names as
# labels): it must end with a letter or digit too.
SAFE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$")
SAFE_NAME_RULE = (
    "use 1-63 lowercase letters, digits, '_' or '-', starting and ending with a letter or "
    "digit"
)
# Development-folder adapter names: a sub-folder of LORASWAP_ADAPTER_DIR.
DEV_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEV_NAME_RULE = ("use letters, digits, '.', '_' or '-', starting with a letter or digit, "
                 "at most 128 characters")
MAX_VERSION = 99_999_999  # eight digits in the registry's object layout
_TAG = re.compile(r"^[0-9a-f][0-9a-f-]{0,63}$")


def is_safe_name(value: str) -> bool:
    """Whether ``value`` can be a tenant or registered adapter name."""
    return bool(SAFE_NAME.fullmatch(value))


class Version(str):
    """One version of an adapter: a registry number or a development folder's tag.

    A ``str`` so that it is written the same way in JSON answers, labels and logs; built
    only through :meth:`of`, :meth:`tag` or :meth:`parse`, so every instance is valid.
    """

    __slots__ = ()

    @classmethod
    def of(cls, number: int) -> Version:
        """The registry's version ``number`` (1 to 99,999,999; else a 400 naming it)."""
        if isinstance(number, bool) or not 1 <= number <= MAX_VERSION:
            shown = str(number) if abs(number) < 10**12 else f"{str(number)[:12]}..."
            raise InvalidRequestError(
                f"version {shown} is not a version number (versions are 1 to {MAX_VERSION})")
        return cls(str(number))

    @classmethod
    def tag(cls, text: str) -> Version:
        """A development folder's content tag (lowercase hex and '-')."""
        if not _TAG.fullmatch(text):
            raise InvalidRequestError(f"version tag {text!r} is not a development tag")
        return cls(text)

    @classmethod
    def parse(cls, value: object) -> Version:
        """A version from a request: an integer, digits, or a development tag."""
        if isinstance(value, Version):
            return value
        if isinstance(value, int):
            return cls.of(value)
        if isinstance(value, str):
            if value.isascii() and value.isdigit() and len(value) <= 12:
                return cls.of(int(value))
            return cls.tag(value)
        raise InvalidRequestError(f"version {value!r} is neither a number nor a tag")

    @property
    def is_number(self) -> bool:
        """Whether this is a registry version (not a development tag)."""
        return self.isdigit()

    @property
    def number(self) -> int:
        """The registry's version number (400 for a development tag)."""
        if not self.is_number:
            raise InvalidRequestError(f"version {str(self)!r} is not a registry version")
        return int(self)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        """Validated from an int or a string (requests), serialised as a string (answers)."""
        def validate(value: object) -> Version:
            try:
                return cls.parse(value)
            except InvalidRequestError as exc:
                raise ValueError(str(exc)) from exc

        return core_schema.no_info_plain_validator_function(
            validate, json_schema_input_schema=core_schema.union_schema(
                [core_schema.int_schema(), core_schema.str_schema()]),
            serialization=core_schema.plain_serializer_function_ser_schema(
                str, when_used="always", return_schema=core_schema.str_schema()))

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema,
                                     handler: Any) -> dict[str, Any]:
        """Answers carry a string; requests may send the number itself."""
        return {"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 1}],
                "description": "A registry version number (\"3\") or a development tag."}


@dataclass(frozen=True, order=True)
class AdapterRef:
    """An adapter: ``tenant/name`` in the registry, or ``name`` in the development folder."""

    tenant: str | None
    name: str

    def __post_init__(self) -> None:
        if self.tenant is None:
            if not DEV_NAME.fullmatch(self.name):
                raise InvalidRequestError(f"adapter name {self.name!r} is invalid: "
                                          f"{DEV_NAME_RULE}")
        elif not (is_safe_name(self.tenant) and is_safe_name(self.name)):
            raise InvalidRequestError(
                f"adapter name {f'{self.tenant}/{self.name}'!r} is invalid: registered "
                f"adapters are 'tenant/name', each part: {SAFE_NAME_RULE}")

    @classmethod
    def parse(cls, text: str) -> AdapterRef:
        """The one reader of ``tenant/name`` and ``name`` (400 naming the rule)."""
        tenant, slash, name = text.partition("/")
        return cls(tenant if slash else None, name if slash else text)

    @property
    def is_registered(self) -> bool:
        """Whether the registry holds it (a tenant owns it)."""
        return self.tenant is not None

    @property
    def owner(self) -> str:
        """The owning tenant of a registered adapter (ValueError for a development one)."""
        if self.tenant is None:
            raise ValueError(f"{self.name!r} is a development adapter: no tenant owns it")
        return self.tenant

    def owned_by(self, tenant: str | None) -> bool:
        """Whether ``tenant`` owns this adapter (development adapters have no owner)."""
        return self.tenant is not None and self.tenant == tenant

    def at(self, version: Version) -> AdapterVersionRef:
        """This adapter's ``version``."""
        return AdapterVersionRef(self, version)

    def __str__(self) -> str:
        return self.name if self.tenant is None else f"{self.tenant}/{self.name}"


@dataclass(frozen=True, order=True)
class AdapterVersionRef:
    """One version of one adapter: what the engine loads, drift watches and answers name."""

    ref: AdapterRef
    version: Version

    @classmethod
    def parse(cls, text: str) -> AdapterVersionRef:
        """``tenant/name@version`` or ``name@tag`` (400 naming the rule)."""
        head, at, version = text.rpartition("@")
        if not at:
            raise InvalidRequestError(f"{text!r} names no version: use 'adapter@version'")
        return cls(AdapterRef.parse(head), Version.parse(version))

    @property
    def tenant(self) -> str | None:
        """The owning tenant (None: a development adapter)."""
        return self.ref.tenant

    @property
    def owner(self) -> str:
        """The owning tenant of a registered version (ValueError for a development one)."""
        return self.ref.owner

    @property
    def name(self) -> str:
        """The adapter's name within its tenant (or folder)."""
        return self.ref.name

    @property
    def labels(self) -> tuple[str, str, str]:
        """``tenant, adapter, version`` for Prometheus: ``adapter`` is ``tenant/name``."""
        return self.ref.tenant or "", str(self.ref), str(self.version)

    def __str__(self) -> str:
        return f"{self.ref}@{self.version}"
