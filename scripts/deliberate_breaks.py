"""Break the product on purpose, once per test-quality item of issue 26, and check that
the test named for the item fails (docs/test-quality.md records what each one printed).

Each break is a textual edit of one or more files of this checkout. The script applies
it, runs the item's tests with the checkout's ``.venv`` (Debian test tools from
``.venv-tools`` on ``PATH``, as ``make test`` does), records the outcome, and restores the
edited files with ``git checkout``. A break that leaves its tests passing is a test that
does not catch what it names.

    python scripts/deliberate_breaks.py                 # every break
    python scripts/deliberate_breaks.py 9-lost-updates  # one
    python scripts/deliberate_breaks.py --list

Run it on a clean checkout where ``make test`` has run (the venv, the tools and the real
model are there); the e2e break takes minutes, the others seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Break:
    """One deliberate break: the issue item, what it breaks, the edits, the tests."""

    item: str
    what: str
    edits: list[tuple[str, str, str]]  # (file, old text, new text); old occurs once
    tests: list[str]


BREAKS: dict[str, Break] = {
    "1-swapped-evaluator": Break(
        "1",
        "seq-cls evaluator swaps the two labels (pred = 1 - argmax)",
        [
            (
                "training/evaluate.py",
                "        pred.extend(arg.tolist())",
                "        pred.extend((1 - arg).tolist())",
            )
        ],
        [
            "tests/training/test_package_eval.py",
            "tests/training/test_retrain_run.py::test_a_seq_cls_run_promotes_on_higher_accuracy_and_keeps_a_worse_candidate",
        ],
    ),
    "1-constant-evaluator": Break(
        "1",
        "seq-cls evaluator always predicts label 0",
        [
            (
                "training/evaluate.py",
                "        pred.extend(arg.tolist())",
                "        pred.extend([0] * len(arg))",
            )
        ],
        ["tests/training/test_package_eval.py"],
    ),
    "2-plain-def-dependency": Break(
        "2",
        "a drift-route dependency made a plain def (FastAPI sends it to the thread pool)",
        [
            (
                "service/api/routes_drift.py",
                "async def get_drift(components: ComponentsDep)",
                "def get_drift(components: ComponentsDep)",
            )
        ],
        ["tests/service/api/test_dependencies.py"],
    ),
    "3-dropped-adapters": Break(
        "3",
        "the engine drops every adapter's delta (LoRA B scaled by 0 in the slot table)",
        [
            (
                "service/engine/lora_slots.py",
                "copy_(lora_b.t() * scaling)",
                "copy_(lora_b.t() * scaling * 0)",
            )
        ],
        [
            "tests/service/api/test_predict_api.py::test_concurrent_requests_get_their_own_adapter_output",
            "tests/service/test_real_model_server.py::test_concurrent_requests_over_four_adapters_match_peft_and_change_the_answers",
        ],
    ),
    "4-kept-adapters": Break(
        "4",
        "the slot manager keeps every adapter it ever loaded",
        [
            (
                "service/engine/residency.py",
                "            self.table.load(slot, weights)\n",
                "            self.table.load(slot, weights)\n            self.__dict__.setdefault('_kept', []).append(weights)\n",
            )
        ],
        ["tests/service/test_leaks.py::test_1000_adapter_load_evict_cycles_through_the_slot_table"],
    ),
    "5-miscounted-status": Break(
        "5",
        "the metrics middleware counts 422 answers as 200",
        [
            (
                "service/api/metrics_middleware.py",
                '                status = int(message["status"])',
                '                status = 200 if int(message["status"]) == 422 else int(message["status"])',
            )
        ],
        ["tests/service/test_fuzz_api.py::test_fuzzing_finds_no_5xx_and_only_documented_errors"],
    ),
    "6-js-without-sqrt": Break(
        "6",
        "the JS gauge exports the divergence, not the distance (no square root)",
        [
            (
                "service/drift/scores.py",
                "    return float(np.sqrt(divergence))",
                "    return float(divergence)",
            )
        ],
        [
            "tests/service/drift/test_signals_api.py::test_label_gauges_equal_the_scores_computed_from_the_profile_and_the_answers"
        ],
    ),
    "7-profile-length-off-by-one": Break(
        "7",
        "training's profile counts one token more per input than serving",
        [
            (
                "training/profile.py",
                "    lengths = [float(len(e.input_ids)) for e in data]",
                "    lengths = [float(len(e.input_ids) + 1) for e in data]",
            )
        ],
        ["tests/training/test_profile_matches_serving.py"],
    ),
    "8-renamed-metric": Break(
        "8",
        "the service renames loraswap_drift_alarm_level (rules and dashboard still query it; the name stays in docstrings)",
        [
            (
                "service/drift/metrics.py",
                'Gauge("loraswap_drift_alarm_level"',
                'Gauge("loraswap_drift_alarm_threshold"',
            )
        ],
        ["tests/deploy/test_monitoring.py::test_every_queried_metric_is_defined_by_the_service"],
    ),
    "9-lost-updates": Break(
        "9",
        "tenant record changes as read-then-write without compare-and-swap",
        [
            (
                "tenants/directory.py",
                "        update_object(self.store, key, apply)\n",
                "        new = apply(self.store.get(key))\n        self.store.put(key, new) if new is not None else self.store.delete(key)\n",
            )
        ],
        [
            "tests/adapters/test_concurrent_writes.py::test_policy_changes_and_key_rotations_lose_nothing"
        ],
    ),
    "10-rslora-ignored": Break(
        "10",
        "LoRA scaling ignores rsLoRA (alpha/r always)",
        [
            (
                "adapters/lora_format.py",
                "        if self.use_rslora:\n            return self.lora_alpha / math.sqrt(self.r)\n",
                "",
            )
        ],
        ["tests/service/engine/test_lora_slots.py::test_mixed_rows_get_their_own_adapter_delta"],
    ),
    "11-gate-always-keeps": Break(
        "11",
        "the retrain gate never promotes",
        [
            (
                "training/retrain.py",
                '    return improved and kept_original, "; ".join(parts)',
                '    return False, "; ".join(parts)',
            )
        ],
        ["tests/e2e/test_drift_loop.py"],
    ),
    "12-fs-write-in-place": Break(
        "12",
        "the folder store writes half the new bytes in place before publishing",
        [
            (
                "adapters/store/filesystem.py",
                "        tmp = self._write_bytes(target, data)\n        if self.before_publish",
                "        tmp = self._write_bytes(target, data)\n        target.write_bytes(data[: len(data) // 2])\n        if self.before_publish",
            )
        ],
        ["tests/adapters/test_store.py::test_a_write_is_invisible_until_it_is_published"],
    ),
    "12-s3-delete-first": Break(
        "12",
        "the S3 store deletes the old object before the PUT",
        [
            (
                "adapters/store/s3.py",
                '        self._call("put", key, lambda: self.client.put_object(',
                '        self.client.delete_object(Bucket=self.bucket, Key=name)\n        self._call("put", key, lambda: self.client.put_object(',
            )
        ],
        [
            "tests/adapters/test_store.py::test_an_s3_write_is_invisible_until_the_server_has_it_whole"
        ],
    ),
    "13-ttft-zero": Break(
        "13",
        "the engine bench takes the first token's time at submission (TTFT 0)",
        [
            (
                "loraswap/bench/engine_bench.py",
                "            first = time.perf_counter()",
                "            first = started",
            )
        ],
        ["tests/loraswap/test_bench_smoke.py::test_bench_runs_every_scenario"],
    ),
    "14-inverted-share": Break(
        "14",
        "capture keeps the answers whose draw is above the share (the other half)",
        [("service/drift/capture.py", "self._rng.random() >= share", "self._rng.random() < share")],
        ["tests/service/drift/test_capture_index.py::test_a_shared_policy_captures_whole_answers"],
    ),
    "net-kernels-importable": Break(
        "offline",
        "stay_offline() no longer blocks the kernels package",
        [
            (
                "loraswap/offline.py",
                "        sys.modules[name] = None  # type: ignore[assignment]",
                "        pass",
            )
        ],
        ["tests/service/test_network_guard.py"],
    ),
    "net-no-offline": Break(
        "offline",
        "stay_offline() does nothing (no offline switches, kernels importable)",
        [
            (
                "loraswap/offline.py",
                "    os.environ.update(HUB_OFFLINE_SWITCHES)\n    for name in HUB_CODE_PACKAGES:\n        sys.modules[name] = None  # type: ignore[assignment]",
                "    return",
            )
        ],
        ["tests/service/test_network_guard.py"],
    ),
    "3-dropped-adapters-real": Break(
        "3",
        "the engine drops every adapter's delta (the real-model test)",
        [
            (
                "service/engine/lora_slots.py",
                "copy_(lora_b.t() * scaling)",
                "copy_(lora_b.t() * scaling * 0)",
            )
        ],
        [
            "tests/service/test_real_model_server.py::test_concurrent_requests_over_four_adapters_match_peft_and_change_the_answers"
        ],
    ),
}


def apply(edits: list[tuple[str, str, str]]) -> None:
    """Make each edit; the old text must occur exactly once (else the break is stale)."""
    for file, old, new in edits:
        path = REPO / file
        text = path.read_text(encoding="utf-8")
        if text.count(old) != 1:
            raise SystemExit(f"{file}: the text to break occurs {text.count(old)} times")
        path.write_text(text.replace(old, new), encoding="utf-8")


def refuse_uncommitted(files: set[str]) -> None:
    """Stop before a break whose files hold uncommitted work: the restore would erase it."""
    status = subprocess.run(["git", "status", "--porcelain", "--", *sorted(files)], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    if status.strip():
        raise SystemExit(f"uncommitted changes the restore would erase:\n{status}")


def run(name: str, broken: Break) -> dict[str, object]:
    """Apply one break, run its tests, restore the files; the outcome as a dict.

    Caught means pytest ran the tests and some failed (exit status 1). Any other non-zero
    status (a test id that no longer exists, a collection error, an internal error) is no
    proof that a test caught the break, so it counts as not caught.
    """
    files = {f for f, _, _ in broken.edits}
    refuse_uncommitted(files)
    env = dict(
        os.environ,
        PATH=os.pathsep.join(
            [
                str(REPO / ".venv-tools/debian/root/usr/bin"),
                str(REPO / ".venv/bin"),
                os.environ.get("PATH", ""),
            ]
        ),
    )
    started = time.monotonic()
    try:
        # Inside the try: a stale second edit must not leave the first one in place.
        apply(broken.edits)
        result = subprocess.run(
            [
                str(REPO / ".venv/bin/python"),
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-o",
                "addopts=",
                *broken.tests,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        subprocess.run(["git", "checkout", "--", *sorted(files)], cwd=REPO, check=True)
    lines = result.stdout.splitlines()
    return {
        "name": name,
        "item": broken.item,
        "what": broken.what,
        "caught": result.returncode == 1,
        "pytest_exit": result.returncode,
        "summary": lines[-1] if lines else result.stderr[-300:],
        "errors": [line for line in lines if line.startswith("E ")][:6],
        "seconds": round(time.monotonic() - started),
    }


def main(argv: list[str]) -> int:
    """Run the breaks named in ``argv`` (all without names); exit 1 if one was not caught."""
    if argv == ["--list"]:
        for name, broken in BREAKS.items():
            sys.stdout.write(f"{name}: item {broken.item}: {broken.what}\n")
        return 0
    unknown = [name for name in argv if name not in BREAKS]
    if unknown:
        raise SystemExit(f"unknown breaks {unknown}; --list shows them")
    missed = 0
    for name in argv or list(BREAKS):
        outcome = run(name, BREAKS[name])
        missed += not outcome["caught"]
        sys.stdout.write(json.dumps(outcome) + "\n")
        sys.stdout.flush()
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
