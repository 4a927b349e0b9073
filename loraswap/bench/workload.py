"""The benchmark workload: deterministic prompts, random PEFT adapters, the base model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraswap.adapters.demo import DEFAULT_TARGETS, write_random_adapter
from loraswap.adapters.lora_format import CONFIG_FILE, LLAMA_PROJECTIONS, WEIGHTS_FILE

SENTENCES: tuple[str, ...] = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk.",
    "Quarterly revenue grew by twelve percent, driven mostly by subscription renewals.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen.",
    "She packed a thermos of tea, two apples and a paperback novel for the train ride.",
    "To reset your password, open the settings page and choose the security tab.",
    "The river flooded the lower fields after three days of unrelenting rain.",
    "A good sourdough starter needs flour, water, patience and a warm kitchen.",
    "The committee postponed its decision until the auditors had finished their report.",
    "Jupiter's great red spot is a storm larger than the whole of planet Earth.",
    "He tuned the violin slowly, listening for the faint beating between the strings.",
    "Please summarise the attached contract and list every deadline it mentions.",
    "Migrating geese fly in a V shape to save energy on their long journeys south.",
    "The museum's new wing displays pottery from the bronze age alongside modern art.",
    "Compile the project with optimisations enabled before measuring its performance.",
    "Our neighbours adopted a shy grey cat that hides under the porch all afternoon.",
    "Interest rates rose again, and first-time buyers struggled to find affordable homes.",
    "The recipe calls for two cups of rice, a pinch of saffron and fresh peas.",
    "Glaciers carved these valleys over hundreds of thousands of years of slow movement.",
    "Write a short poem about a fox crossing a snowy field under a silver moon.",
    "The marathon route winds through the harbour, the old town and the city park.",
    "Antibiotics do not work against viruses, so rest and fluids are recommended instead.",
    "The startup hired four engineers to rebuild its payment system from scratch.",
    "Volcanic soil is rich in minerals, which is why vineyards thrive on the slopes.",
    "Explain the difference between a list and a tuple in Python to a beginner.",
    "Fog rolled in from the bay, and the foghorn sounded every thirty seconds.",
    "The library extended its opening hours during the exam season for students.",
    "Honeybees communicate the location of flowers through a waggle dance.",
    "Translate the following sentence into French: the weather is lovely today.",
    "The chess grandmaster sacrificed her queen to force checkmate in five moves.",
    "Solar panels on the school roof now supply most of its electricity in summer.",
    "After the storm, volunteers cleared fallen branches from the mountain trail.",
    "The detective noticed that the clock on the mantelpiece had stopped at midnight.",
)


@dataclass(frozen=True)
class AdapterSpec:
    """Shape and initialisation of the random LoRA adapters."""

    rank: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    init_std: float = 0.02
    seed: int = 1234

    @property
    def tag(self) -> str:
        """Folder-name fragment identifying the spec (adapters are cached per spec)."""
        short = "".join(t[0] for t in self.targets)
        return f"r{self.rank}-a{self.alpha:g}-{short}-std{self.init_std:g}-s{self.seed}"


def parse_targets(spec: str) -> tuple[str, ...]:
    """``"all"`` or comma-separated projection names -> projection names, in Llama order."""
    if spec.strip().lower() == "all":
        return LLAMA_PROJECTIONS
    names = {part.strip() for part in spec.split(",") if part.strip()}
    unknown = names - set(LLAMA_PROJECTIONS)
    if unknown or not names:
        raise ValueError(
            f"unknown targets {sorted(unknown)}; choose from {', '.join(LLAMA_PROJECTIONS)} or all"
        )
    return tuple(p for p in LLAMA_PROJECTIONS if p in names)


def build_prompts(tokenizer: Any, count: int, length: int) -> list[list[int]]:
    """``count`` deterministic prompts of exactly ``length`` tokens, each a different mix of
    sentences (raw text, no chat template)."""
    prompts: list[list[int]] = []
    for index in range(count):
        start = (index * 7) % len(SENTENCES)
        ids: list[int] = []
        offset = 0
        while len(ids) < length:
            sentence = SENTENCES[(start + offset) % len(SENTENCES)]
            text = sentence if not ids else " " + sentence
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            offset += 1
        prompts.append(ids[:length])
    return prompts


def ensure_adapters(root: Path, base_dir: Path, count: int, spec: AdapterSpec) -> list[Path]:
    """Folders of ``count`` random adapters for the model in ``base_dir``, generated once.

    They live in ``root/<model>-<spec tag>/adapter-NN``; existing ones are reused.
    """
    cache = root / f"{base_dir.name}-{spec.tag}"
    folders: list[Path] = []
    for index in range(count):
        folder = cache / f"adapter-{index:02d}"
        if not ((folder / WEIGHTS_FILE).is_file() and (folder / CONFIG_FILE).is_file()):
            write_random_adapter(base_dir, folder, rank=spec.rank, targets=spec.targets,
                                 seed=spec.seed + index, alpha=spec.alpha, scale=spec.init_std)
        folders.append(folder)
    return folders


def load_base(path: Path, device: str = "cpu", precision: str = "bf16") -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) in ``precision`` (bf16 or fp32): the one place the
    benchmark loads it."""
    from loraswap.base_model.loading import Quantization, load_base_model

    loaded = load_base_model(path, Quantization(precision), device)
    return loaded.model, loaded.tokenizer
