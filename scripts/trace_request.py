"""List the project files one ``POST /v1/predict`` call enters, in order (docs/architecture.md).

Serves the tests' tiny random Llama (no download) with one development-folder adapter on a
real uvicorn server in this process, sends one warm-up request, then records every Python
call into a project file (``sys.setprofile`` on every thread) during a second, identical
request, and writes the files in the order they were entered, with the thread each ran on.
Consecutive calls inside one file count as one entry; a coroutine resumed after an
``await`` (the profiler reports it as a call again) is not a new entry. The engine
thread's step loop, which serves every request alike, is summarised at the end.

    python scripts/trace_request.py [--drift] [--calls]

``--drift`` turns drift monitoring on (as ``make run`` does); ``--calls`` lists the
functions too.
"""

from __future__ import annotations

import inspect
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loraswap.offline import stay_offline  # noqa: E402

stay_offline()

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from loraswap.adapters.demo import write_random_adapter  # noqa: E402
from loraswap.base_model.loading import Quantization, load_base_model  # noqa: E402
from loraswap.service.app import create_app  # noqa: E402
from loraswap.service.settings import Settings  # noqa: E402
from tests.conftest import build_tiny_llama, build_tiny_tokenizer  # noqa: E402

ENGINE_THREAD = "loraswap-engine"
SUSPENDABLE = (inspect.CO_COROUTINE | inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR
               | inspect.CO_ITERABLE_COROUTINE)
FOLDERS = ("loraswap", "service", "adapters", "training", "core", "base_model", "jobs",
           "tenants")


def project_file(filename: str) -> str | None:
    """``service/api/pipeline.py`` for a file of the project (under any of its import
    paths), else None."""
    path = Path(filename)
    if not path.is_absolute() or ROOT not in path.parents:
        return None
    parts = path.relative_to(ROOT).parts
    if parts[:1] == ("loraswap",) and len(parts) > 1 and parts[1] in FOLDERS[1:]:
        parts = parts[1:]  # loraswap/service/... is service/... through the symlink
    return "/".join(parts) if parts and parts[0] in FOLDERS else None


class Recorder:
    """Project-file calls of every thread while ``on`` is set."""

    def __init__(self) -> None:
        self.on = threading.Event()
        self.events: list[tuple[str, str, str]] = []
        # Coroutine and generator frames seen (kept alive, so no id is reused): a second
        # "call" of one of them is a resumption.
        self._suspendable: dict[int, FrameType] = {}
        self._lock = threading.Lock()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or not self.on.is_set():
            return
        name = project_file(frame.f_code.co_filename)
        if name is None:
            return
        with self._lock:
            if frame.f_code.co_flags & SUSPENDABLE:
                if id(frame) in self._suspendable:
                    return
                self._suspendable[id(frame)] = frame
            self.events.append((threading.current_thread().name, name,
                                frame.f_code.co_qualname))


def serve(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    app = create_app(settings, loader=lambda s: load_base_model(s.base_model, s.quantization,
                                                                s.device))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def main(argv: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix="trace-request-"))
    base = work / "base"
    tokenizer = build_tiny_tokenizer(base)
    build_tiny_llama(base, vocab_size=len(tokenizer))
    write_random_adapter(base, work / "adapters" / "helper", rank=4,
                         targets=("q_proj", "v_proj"), seed=1)
    settings = Settings(base_model=base, quantization=Quantization.FP32, device="cpu",
                        adapter_dir=work / "adapters", store_uri=(work / "store").as_uri(),
                        adapter_cache_dir=work / "cache", dev_mode=True,
                        drift_enabled="--drift" in argv)
    recorder = Recorder()
    threading.setprofile(recorder)
    sys.setprofile(recorder)
    server, thread, url = serve(settings)
    body = {"adapter": "helper", "inputs": "the quick brown fox",
            "parameters": {"max_new_tokens": 4, "ignore_eos": True}}
    with httpx.Client(base_url=url, timeout=60) as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        client.post("/v1/predict", json=body).raise_for_status()  # warm-up
        time.sleep(0.5)
        recorder.on.set()
        answer = client.post("/v1/predict", json=body)
        time.sleep(0.5)  # let the engine thread finish its step
        recorder.on.clear()
    sys.setprofile(None)
    threading.setprofile(None)  # type: ignore[arg-type]
    server.should_exit = True
    thread.join(timeout=30)
    answer.raise_for_status()
    events = [e for e in recorder.events if e[0] != threading.main_thread().name]
    engine = [e for e in events if e[0] == ENGINE_THREAD]
    entries: list[tuple[str, str, list[str]]] = []
    for thread_name, name, function in (e for e in events if e[0] != ENGINE_THREAD):
        if entries and entries[-1][:2] == (thread_name, name):
            if function not in entries[-1][2]:
                entries[-1][2].append(function)
        else:
            entries.append((thread_name, name, [function]))
    out = sys.stdout
    out.write(f"# drift {'on' if settings.drift_enabled else 'off'}; answer {answer.json()}\n")
    out.write(f"# request path: {len(entries)} entries into "
              f"{len({e[1] for e in entries})} files\n")
    for index, (thread_name, name, functions) in enumerate(entries, 1):
        shown = f"  {', '.join(functions[:6])}" if "--calls" in argv else ""
        out.write(f"{index:3d} [{thread_name}] {name}{shown}\n")
    first: dict[str, int] = {}
    for _, name, _ in engine:
        first[name] = first.get(name, 0) + 1
    out.write(f"# engine thread ({ENGINE_THREAD}): {len(engine)} calls into {len(first)} "
              "files, in order of first entry (calls):\n")
    for name, calls in first.items():
        out.write(f"    {name} ({calls})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
