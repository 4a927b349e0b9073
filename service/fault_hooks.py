"""Test-only fault hooks, armed only by an explicit setting (crash-safety tests).

``LORASWAP_FAULT_PAUSE_BEFORE_PUBLISH=<key suffix>`` makes a write (a put or a
compare-and-swap) of a matching key to the folder store pause forever after its temporary
file is written and fsynced and before it is published, and log ``fault hook: paused before
publishing <key>``; a test then kills the process with SIGKILL right there and checks what a
restart finds. A value with a ``*`` is a pattern for the whole key instead (``fnmatch``:
``feedback/*`` pauses every feedback batch).
"""

from __future__ import annotations

import fnmatch
import logging
import threading

from loraswap.adapters.store import FileSystemStore, ObjectStore
from loraswap.service.settings import Settings

logger = logging.getLogger(__name__)

PAUSED_MESSAGE = "fault hook: paused before publishing"


def arm_fault_hook(store: ObjectStore, settings: Settings) -> ObjectStore:
    """``store``, with the pause armed when the setting asks for it (never by default)."""
    wanted = settings.fault_pause_before_publish
    if wanted and isinstance(store, FileSystemStore):
        def pause(key: str) -> None:
            if fnmatch.fnmatchcase(key, wanted) if "*" in wanted else key.endswith(wanted):
                logger.warning("%s %s", PAUSED_MESSAGE, key)
                threading.Event().wait()  # until the test kills the process

        store.before_publish = pause
    return store
