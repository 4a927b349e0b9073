"""`loraswap serve` with test-only faults, for the process-level tests.

Run as ``python -m tests.utils.patched_serve [--crash-before-put REGEX [--crash-skip N]]
[--deny-network LOG] -- serve [options]``. The patches live here, in the test tree, so no
production code path can enable them:

- ``--crash-before-put REGEX``: the process SIGKILLs itself just before the filesystem store
  writes a key matching REGEX (after ``--crash-skip`` earlier matches): a crash that lands
  between "package blobs written" and "manifest written", or before a promotion's
  ``state.json`` is written, as an OOM kill or power loss would.
- ``--deny-network LOG``: every connection or name lookup that is not loopback fails and
  is appended to LOG, so a test can show the service never tries to reach the network
  (the Hugging Face Hub included) although ``HF_HUB_OFFLINE`` is not set.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", ""})


def crash_before_put(pattern: str, skip: int) -> None:
    """SIGKILL this process before the ``skip``-th later write of a key matching ``pattern``,
    plain (``put``: package files) or compare-and-swap (``put_if_match``: ``state.json``,
    tenant records)."""
    from loraswap.adapters.store.filesystem import FileSystemStore

    matched = re.compile(pattern)
    seen = [0]

    def crash_if_matching(key: str) -> None:
        if matched.search(key):
            if seen[0] == skip:
                os.kill(os.getpid(), signal.SIGKILL)
            seen[0] += 1

    original_put = FileSystemStore.put
    original_put_if_match = FileSystemStore.put_if_match

    def put(self: FileSystemStore, key: str, data: bytes) -> None:
        crash_if_matching(key)
        original_put(self, key, data)

    def put_if_match(self: FileSystemStore, key: str, data: bytes,
                     expected: str | None) -> bool:
        crash_if_matching(key)
        return original_put_if_match(self, key, data, expected)

    FileSystemStore.put = put  # type: ignore[method-assign]
    FileSystemStore.put_if_match = put_if_match  # type: ignore[method-assign]


def _is_loopback(host: Any) -> bool:
    if not isinstance(host, str):
        return False
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def deny_network(log: Path) -> None:
    """Refuse (and log) every non-loopback connect and name lookup in this process."""

    def refuse(what: str) -> OSError:
        with log.open("a", encoding="utf-8") as handle:
            handle.write(what + "\n")
        return OSError(f"network denied by the test: {what}")

    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex
    original_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise refuse(f"connect {address!r}")
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise refuse(f"connect_ex {address!r}")
        return original_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and not _is_loopback(name):
            raise socket.gaierror(socket.EAI_NONAME, str(refuse(f"getaddrinfo {name!r}")))
        return original_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo


def main() -> None:
    """Install the requested faults, then run the loraswap CLI with the remaining args."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--crash-before-put")
    parser.add_argument("--crash-skip", type=int, default=0)
    parser.add_argument("--deny-network", type=Path)
    parser.add_argument("cli", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.deny_network is not None:
        deny_network(args.deny_network)
    if args.crash_before_put:
        crash_before_put(args.crash_before_put, args.crash_skip)
    from loraswap.cli import app

    sys.argv = ["loraswap", *[a for a in args.cli if a != "--"]]
    app()


if __name__ == "__main__":
    main()
