"""The CLI tests drive real servers: reuse the service tests' fixtures."""

from tests.service.conftest import live_server, make_package  # noqa: F401 (fixtures)
