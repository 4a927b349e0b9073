"""loraswap and AdapterHub's ``adapters`` library (PyPI) installed side by side: one process
imports and uses both, and loraswap installs nothing at the top level but ``loraswap``.

Before the one import namespace (issue 20), ``pip install`` put packages named
``service``, ``adapters`` and ``training`` into site-packages: whichever of the two
``adapters`` came first on the path shadowed the other.

AdapterHub's only release line (1.3.0, the newest on PyPI) pins ``transformers~=4.57.6``
and imports ``huggingface_hub.HfFolder``, which the ``huggingface_hub>=1`` that
transformers 5 needs has removed: with loraswap's own dependencies it does not import at
all (``ImportError: cannot import name 'HfFolder'``), whichever version is picked. So it is
installed, ``--no-deps``, with the three pins it needs (transformers 4.57.6, tokenizers
0.22.1, huggingface_hub 0.36.0) into one cached folder, placed on the path beside loraswap;
torch stays the environment's. The loraswap modules used here need no transformers.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from tests.utils.env import REPO_ROOT

ADAPTERHUB = ("adapters==1.3.0", "transformers==4.57.6", "tokenizers==0.22.1",
              "huggingface_hub==0.36.0")
CACHE = Path.home() / ".cache" / "loraswap-test" / "adapterhub-1.3.0"
# What the checkout's install may put at the top level of site-packages.
SOURCE_FOLDERS = ("loraswap", "service", "adapters", "training", "core", "base_model",
                  "jobs", "tenants")
# The folders' names that must not be importable at the top level ("adapters" is
# AdapterHub's, checked by its file).
GENERIC_NAMES = tuple(name for name in SOURCE_FOLDERS[1:] if name != "adapters")
PIP_TIMEOUT = 600


def pip(*args: str) -> None:
    """Run this interpreter's pip (quiet, no version check); fail with its output."""
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q",
                           *args], capture_output=True, text=True, timeout=PIP_TIMEOUT,
                          check=False)
    assert done.returncode == 0, f"pip {' '.join(args)} failed:\n{done.stdout}{done.stderr}"


def adapterhub_folder() -> Path:
    """AdapterHub's library and its pins, downloaded once per machine (then reused)."""
    if (CACHE / "adapters" / "__init__.py").is_file():
        return CACHE
    partial = CACHE.with_name(f"{CACHE.name}.{uuid.uuid4().hex[:8]}.partial")
    pip("install", "--no-deps", "--target", str(partial), *ADAPTERHUB)
    try:
        partial.rename(CACHE)
    except OSError:  # another run finished first
        shutil.rmtree(partial, ignore_errors=True)
    return CACHE


def install_checkout(into: Path, scratch: Path) -> None:
    """``pip install --no-deps --target`` of this checkout, as a user would install it
    (built from a copy, so no build output lands in the checkout)."""
    source = scratch / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    for folder in SOURCE_FOLDERS:
        shutil.copytree(REPO_ROOT / folder, source / folder, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    isolation = [] if importlib.util.find_spec("setuptools") is None else [
        "--no-build-isolation"]
    pip("install", "--no-deps", *isolation, "--target", str(into), str(source))


CHILD = textwrap.dedent("""
    import importlib.util, json, sys
    from pathlib import Path

    import adapters  # AdapterHub
    import loraswap.adapters
    import torch
    from transformers import BertConfig
    from loraswap.adapters.demo import write_random_adapter
    from loraswap.adapters.lora_format import read_lora_adapter

    hub_dir, ours_dir, work = (Path(p) for p in sys.argv[1:4])
    # AdapterHub: a LoRA adapter added to a tiny BERT, which then runs.
    bert = adapters.AutoAdapterModel.from_config(BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32))
    bert.add_adapter("hub", config=adapters.LoRAConfig(r=4, alpha=8))
    bert.set_active_adapters("hub")
    hidden = bert(torch.tensor([[1, 2, 3]])).last_hidden_state
    lora_params = sum(p.numel() for n, p in bert.named_parameters() if "loras.hub" in n)
    # loraswap: a PEFT LoRA adapter written for a tiny Llama config and read back.
    base = work / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 400}))
    folder = write_random_adapter(base, work / "ours", rank=4, targets=("q_proj", "v_proj"),
                                  seed=0)
    weights = read_lora_adapter(folder)
    print(json.dumps({
        "hub_file": adapters.__file__, "hub_version": adapters.__version__,
        "hub_model": type(bert).__module__, "hub_hidden": list(hidden.shape),
        "hub_lora_params": lora_params,
        "ours_file": loraswap.adapters.__file__, "ours_rank": weights.rank,
        "ours_targets": sorted(weights.targets),
        "generic_found": {name: importlib.util.find_spec(name) is not None
                          for name in %r},
    }))
""") % (GENERIC_NAMES,)


def test_adapterhub_and_loraswap_in_one_environment(tmp_path: Path, isolated_pip: None) -> None:
    hub = adapterhub_folder()
    ours = tmp_path / "site"
    install_checkout(ours, tmp_path)
    # A user's site-packages after the install: loraswap and its metadata, nothing else.
    assert {p.name for p in ours.iterdir()} - {"bin"} == {
        "loraswap", "loraswap-0.1.0.dist-info"}
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ours), str(hub)))}
    done = subprocess.run([sys.executable, "-c", CHILD, str(hub), str(ours), str(work)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(seen["hub_file"]).is_relative_to(hub) and seen["hub_version"] == "1.3.0"
    assert seen["hub_model"].startswith("adapters.")
    assert seen["hub_hidden"] == [1, 3, 16] and seen["hub_lora_params"] > 0
    assert Path(seen["ours_file"]).is_relative_to(ours / "loraswap" / "adapters")
    assert (seen["ours_rank"], seen["ours_targets"]) == (4, ["q_proj", "v_proj"])
    assert not any(seen["generic_found"].values()), seen["generic_found"]


def test_the_installed_distribution_maps_only_loraswap() -> None:
    """This environment's own install of loraswap (editable in a checkout) exposes one
    top-level name: an editable install's finder maps only ``loraswap``."""
    # Not metadata a build left in the checkout (loraswap.egg-info): the installation.
    dist = next(d for d in importlib.metadata.distributions(name="loraswap")
                if Path(str(d.locate_file(""))).resolve() != REPO_ROOT)
    files = [Path(str(f)) for f in dist.files or ()]
    finders = [f for f in files if f.name.startswith("__editable__") and f.suffix == ".py"]
    if finders:
        spec = importlib.util.spec_from_file_location(
            "loraswap_editable_finder", dist.locate_file(finders[0]))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        top = set(module.MAPPING) | set(module.NAMESPACES)
    else:
        top = {f.parts[0].removesuffix(".py") for f in files
               if not f.parts[0].endswith(".dist-info") and f.parts[0] != ".."}
    assert top == {"loraswap"}, top
    assert dist.read_text("top_level.txt") in (None, "loraswap\n")
