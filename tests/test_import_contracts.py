"""The import contracts of ``pyproject.toml`` (``lint-imports``, run by ``make lint``) hold on
this tree and break on each import cycle issue 20 found in the old layout, put back into a
copy of the tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils.env import REPO_ROOT

FOLDERS = ("loraswap", "service", "adapters", "training", "core", "base_model", "jobs",
           "tenants")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
# (file, the import put back, a contract that must break) per cycle of issue 20.
CYCLES = [
    ("service/drift/records.py", "from loraswap.service.api import deps",
     "No import cycles between siblings"),  # api/serving_* -> drift/records -> api
    ("service/drift/retrain.py", "from loraswap.service.api import protocol",
     "the API over drift, drift over"),  # drift/routes -> api/protocol, the old way round
    ("service/api/state.py", "from loraswap.service.api import deps",
     "No import cycles between siblings"),  # api/deps <-> state
    ("adapters/plain_peft.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
     "    from loraswap.adapters.validation import ValidationLimits",
     "No import cycles between siblings"),  # plain_peft <-> validation
    ("service/engine/scheduler.py", "from loraswap.service.api import pipeline",
     "The engine knows no HTTP framework"),
]


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the sources and pyproject.toml (the contracts read ``loraswap`` from the
    working folder)."""
    root = tmp_path_factory.mktemp("tree")
    shutil.copy2(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    for folder in FOLDERS:
        shutil.copytree(REPO_ROOT / folder, root / folder, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.mark.integration
def test_the_tree_keeps_every_contract(tree: Path) -> None:
    done = lint(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.integration
@pytest.mark.parametrize(("path", "line", "contract"), CYCLES,
                         ids=[f"{c[0]}:{c[1].split()[-1]}" for c in CYCLES])
def test_a_cycle_put_back_breaks_a_contract(tree: Path, path: str, line: str,
                                            contract: str) -> None:
    target = tree / path
    original = target.read_text(encoding="utf-8")
    target.write_text(f"{original}\n{line}  # noqa\n", encoding="utf-8")
    try:
        done = lint(tree)
    finally:
        target.write_text(original, encoding="utf-8")
    assert done.returncode != 0, done.stdout
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, done.stdout
