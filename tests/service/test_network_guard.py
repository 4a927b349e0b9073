"""No loraswap process reaches the network: no connection or name lookup beyond loopback,
with an empty ``HOME`` (as on a new user's machine) and the Hugging Face offline switches
unset (tiny model; the real-model variant is in test_real_model_server.py)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.service.processes import ServiceProcess
from tests.utils.env import HUB_SWITCHES, REPO_ROOT, child_env, empty_home

pytestmark = pytest.mark.integration


def test_serving_makes_no_connection_beyond_loopback(tiny_base_dir: Path, tmp_path: Path,
                                                     make_adapter) -> None:  # type: ignore[no-untyped-def]
    make_adapter("writer", seed=3)
    log = tmp_path / "attempts.log"
    env = {"LORASWAP_BASE_MODEL": str(tiny_base_dir), "LORASWAP_QUANTIZATION": "fp32",
           "LORASWAP_DEVICE": "cpu", "LORASWAP_DEV_MODE": "true",
           "LORASWAP_ADAPTER_DIR": str(tmp_path / "adapters"),
           "LORASWAP_STORE_URI": (tmp_path / "store").as_uri(),
           "LORASWAP_ADAPTER_CACHE_DIR": str(tmp_path / "cache"), "LORASWAP_THREADS": "1",
           **empty_home(tmp_path)}
    server = ServiceProcess(env, tmp_path, unset=HUB_SWITCHES, launcher=(
        "-m", "tests.utils.patched_serve", "--deny-network", str(log), "--")).start()
    try:
        for adapter in (None, "writer"):
            answer = httpx.post(f"{server.url}/v1/predict", timeout=60, json={
                "adapter": adapter, "inputs": "hi", "parameters": {"max_new_tokens": 2}})
            assert answer.status_code == 200, answer.text
        assert httpx.get(f"{server.url}/v1/models", timeout=30).status_code == 200
    finally:
        server.stop()
    attempts = log.read_text() if log.exists() else ""
    assert attempts == "", attempts


def guarded_cli(args: list[str], log: Path,
                home_parent: Path) -> subprocess.CompletedProcess[str]:
    """``loraswap ARGS`` in a child process as a new user runs it: empty ``HOME``, the Hub's
    offline switches unset, every non-loopback connect or lookup refused and logged."""
    return subprocess.run(
        [sys.executable, "-m", "tests.utils.patched_serve", "--deny-network", str(log), "--",
         *args], env=child_env(empty_home(home_parent), HUB_SWITCHES), cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=300)


def test_training_makes_no_connection_beyond_loopback(tiny_base_dir: Path,
                                                      tmp_path: Path) -> None:
    """`loraswap train` imports peft, which imports bitsandbytes, whose CPU backend asked
    the `kernels` package for a kernel repository on the Hub (two huggingface.co lookups
    per start on an AVX512-BF16 CPU with an empty HOME): the trainer must not."""
    data = tmp_path / "data.csv"
    data.write_text("text,label\n" + "".join(
        f"the quick brown fox {i},pos\nparis is the capital {i},neg\n" for i in range(8)))
    log = tmp_path / "attempts.log"
    out = tmp_path / "package"
    result = guarded_cli(["train", "--task", "seq-cls", "--data", str(data), "--output",
                          str(out), "--base-model", str(tiny_base_dir), "--max-steps", "1",
                          "--no-progress", "--tenant", "acme", "--name", "offline"],
                         log, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "loraswap.json").exists()
    assert (log.read_text() if log.exists() else "") == ""


ENTRY_POINTS = [
    "loraswap.cli",  # the `loraswap` command (Dockerfile, k8s Deployment and Jobs)
    "loraswap.__main__",  # python -m loraswap
    "loraswap.service.app",  # the app factory, imported by another process
    "loraswap.jobs.retrain_runs",  # the retraining job's code
    "loraswap.bench_cmd",  # python -m loraswap.bench_cmd
]


@dataclass(frozen=True)
class ProbeResult:
    """One entry point's probe: exit status, output, and what the network guard refused."""

    returncode: int
    stdout: str
    stderr: str
    attempts: str


@pytest.fixture(scope="module")
def kernel_probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ProbeResult]:
    """Every entry point's probe, each in a fresh process, all started at once: a probe is
    one process importing torch and transformers (about 5 s of one core), so on two cores
    the five finish in about half the time of one after another."""
    running = {}
    for entry in ENTRY_POINTS:
        folder = tmp_path_factory.mktemp("probe")
        log = folder / "attempts.log"
        process = subprocess.Popen(
            [sys.executable, "-c", KERNELS_PROBE, str(log), entry],
            env=child_env(empty_home(folder), HUB_SWITCHES), cwd=REPO_ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        running[entry] = (process, log)
    results = {}
    for entry, (process, log) in running.items():
        stdout, stderr = process.communicate(timeout=300)
        results[entry] = ProbeResult(process.returncode, stdout, stderr,
                                     log.read_text() if log.exists() else "")
    return results


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_no_code_loader_from_the_hub_is_importable_after_the_entry_point(
        kernel_probes: dict[str, ProbeResult], entry: str) -> None:
    """Whatever CPU runs the test (bitsandbytes only asks `kernels` on AVX512-BF16), once a
    process has imported any entry point (whose own imports reach transformers): the Hub
    switches are on, `kernels` cannot be imported, transformers sees it as absent, and
    importing peft and bitsandbytes made no lookup."""
    result = kernel_probes[entry]
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[-2:] == ["offline", "no-kernels"], result.stdout
    assert result.attempts == ""


KERNELS_PROBE = """
import importlib, importlib.util, sys
from pathlib import Path
from tests.utils.patched_serve import deny_network
log, entry = Path(sys.argv[1]), sys.argv[2]
deny_network(log)
sys.argv[1:] = ["model", "--help"]  # what loraswap.__main__ runs
try:
    importlib.import_module(entry)
except SystemExit:
    pass
import peft, bitsandbytes
from huggingface_hub import constants
from transformers.utils import is_kernels_available
print("offline" if constants.HF_HUB_OFFLINE else "online")
print("no-kernels" if importlib.util.find_spec("kernels") is None
      and not is_kernels_available() else "kernels")
"""
