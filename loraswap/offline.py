"""Every loraswap process stays off the Hugging Face Hub, whatever ``HOME`` or the
environment hold and whatever transformers pulls in.

Models, tokenizers and datasets are always read from local folders (``local_files_only``),
but the libraries underneath still reach for the Hub on their own:

- ``import peft`` (and our own precision check) imports ``bitsandbytes``, whose CPU
  backend, on a CPU with AVX512-BF16, asks the ``kernels`` package (a transformers
  dependency) for ``kernels-community/quantization-bitsandbytes``: ``kernels`` looks the
  publisher up on huggingface.co, downloads the repository and imports its code. With a
  warm ``~/.cache/huggingface`` nothing showed; with an empty ``HOME`` (a new user, an
  air-gapped pod) every start made two name lookups of huggingface.co, and with the
  repository cached and ``HF_HUB_OFFLINE`` set, it would import that cached Hub code.
- ``huggingface_hub`` refreshes its "agent harness" registry from the Hub when its cached
  copy in ``HOME`` is missing or older than a day.

:func:`stay_offline` is called by each entry point (the ``loraswap`` command line, the
bench scripts) before any of those libraries is imported, because both read their
switches once, at import: the Hub's offline switches are set, transformers' Hub kernels
are switched off, and ``kernels`` is made unimportable (``sys.modules[name] = None``:
``import`` raises ``ModuleNotFoundError`` and ``importlib.util.find_spec`` answers
``None``, so transformers sees it as not installed and bitsandbytes falls back to its own
CPU kernels, logging one warning).
"""

from __future__ import annotations

import os
import sys

# Read by huggingface_hub, transformers and datasets when they are imported.
HUB_OFFLINE_SWITCHES = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # transformers' own switch for kernels fetched from the Hub (``use_kernels``).
    "USE_HUB_KERNELS": "NO",
}
# Packages whose only job here would be to fetch and import code from the Hub.
HUB_CODE_PACKAGES = ("kernels",)


def stay_offline() -> None:
    """Switch the Hugging Face libraries of this process (and of its child processes,
    which inherit the environment) to local files only, and make the Hub code loaders
    unimportable. Call it before anything imports transformers, peft or bitsandbytes.

    Values are set, not defaulted: a shell that exports ``HF_HUB_OFFLINE=0`` does not turn
    a loraswap process into one that downloads.
    """
    os.environ.update(HUB_OFFLINE_SWITCHES)
    for name in HUB_CODE_PACKAGES:
        sys.modules[name] = None  # type: ignore[assignment]
