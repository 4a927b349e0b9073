"""Test-only fault hooks, armed only by an explicit setting (crash-safety tests).

``LORASWAP_FAULT_PAUSE_BEFORE_PUBLISH=<key suffix>`` makes a compare-and-swap write of a
matching key to the folder store pause forever after its temporary file is written and
before it is published, and log ``fault hook: paused before publishing <key>``; a test then
kills the process with SIGKILL right there and checks what a restart finds.
"""

from __future__ import annotations

import logging
import threading

from adapters.store import FileSystemStore, ObjectStore
from service.settings import Settings

logger = logging.getLogger(__name__)

PAUSED_MESSAGE = "fault hook: paused before publishing"


def arm_fault_hook(store: ObjectStore, settings: Settings) -> ObjectStore:
    """``store``, with the pause armed when the setting asks for it (never by default)."""
    suffix = settings.fault_pause_before_publish
    if suffix and isinstance(store, FileSystemStore):
        def pause(key: str) -> None:
            if key.endswith(suffix):
                logger.warning("%s %s", PAUSED_MESSAGE, key)
                threading.Event().wait()  # until the test kills the process

        store.before_publish = pause
    return store
