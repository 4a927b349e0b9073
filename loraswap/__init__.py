"""The ``loraswap`` command line: serve, model fetch, bench.

Importing any ``loraswap`` module first runs this file, so every way into the project (the
``loraswap`` command, ``python -m loraswap``, ``python -m loraswap.bench_cmd``, an app
factory or job imported by another process) is switched off the Hugging Face Hub before
it can import transformers, peft or bitsandbytes (:mod:`loraswap.offline`).
"""

from loraswap.offline import stay_offline

stay_offline()
