"""The slot table: compatibility checks, in-place loads, and the batched delta."""

from __future__ import annotations

import math

import pytest
import torch

from loraswap.adapters.lora_format import LoraAdapterWeights, LoraConfigSummary
from loraswap.core.errors import AdapterIncompatibleError
from loraswap.service.engine.lora_slots import LoraSlotTable, ProjectionGroup

GROUPS = [
    ProjectionGroup("qkv", ("q_proj", "k_proj", "v_proj"), 8, (8, 4, 4)),
    ProjectionGroup("down", ("down_proj",), 12, (8,)),
]


def adapter(name: str, rank: int, modules: dict[str, tuple[int, int]], seed: int,
            alpha: float = 8.0, layers: int = 2, rslora: bool = False) -> LoraAdapterWeights:
    generator = torch.Generator().manual_seed(seed)
    factors = {
        (layer, module): (torch.randn(rank, fan_in, generator=generator),
                          torch.randn(fan_out, rank, generator=generator))
        for layer in range(layers) for module, (fan_in, fan_out) in modules.items()
    }
    config = LoraConfigSummary(r=rank, lora_alpha=alpha, use_rslora=rslora,
                               target_modules=tuple(modules), task_type=None,
                               base_model_name_or_path=None)
    return LoraAdapterWeights(name=name, config=config, factors=factors)


def table(max_loras: int = 3, max_rank: int = 4) -> LoraSlotTable:
    return LoraSlotTable(num_layers=2, groups=GROUPS, max_loras=max_loras, max_rank=max_rank,
                         dtype=torch.float32, device=torch.device("cpu"))


def reference_delta(weights: LoraAdapterWeights, layer: int, members: tuple[str, ...],
                    x: torch.Tensor, widths: tuple[int, ...],
                    scale: float | None = None) -> torch.Tensor:
    """x·Aᵀ·Bᵀ·scale per member. ``scale`` given: worked out by the test from alpha and r,
    not read from the code under test (``config.scaling``)."""
    parts = []
    for module, width in zip(members, widths, strict=True):
        pair = weights.factors.get((layer, module))
        if pair is None:
            parts.append(torch.zeros(x.shape[0], width))
        else:
            lora_a, lora_b = pair
            factor = weights.config.scaling if scale is None else scale
            parts.append(x @ lora_a.t() @ lora_b.t() * factor)
    return torch.cat(parts, dim=-1)


def test_mixed_rows_get_their_own_adapter_delta() -> None:
    """Rows of 3 adapters (ranks 2/4, different targets, alpha/r of 1.5 and 2, one rsLoRA:
    alpha/sqrt(r) = 2.5) plus base rows, interleaved and unevenly sized: every row's delta
    equals its own adapter's B·A·scale, the scale worked out here from alpha and r."""
    slots = table()
    a = adapter("a", 2, {"q_proj": (8, 8), "v_proj": (8, 4)}, seed=1, alpha=3.0)
    b = adapter("b", 4, {"k_proj": (8, 4), "down_proj": (12, 8)}, seed=2, alpha=8.0)
    c = adapter("c", 4, {"q_proj": (8, 8), "k_proj": (8, 4), "v_proj": (8, 4)}, seed=3,
                alpha=5.0, rslora=True)
    scales = {1: 3.0 / 2, 2: 8.0 / 4, 3: 5.0 / math.sqrt(4)}
    for slot, weights in enumerate((a, b, c), start=1):
        slots.load(slot, weights)
    row_slots = torch.tensor([1, 0, 3, 3, 2, 1, 3, 0, 3])
    plan = slots.plan(row_slots)
    assert plan is not None
    x = torch.randn(len(row_slots), 8)
    y = torch.zeros(len(row_slots), 16)
    plan.add_delta(1, "qkv", x, y)
    by_slot = {1: a, 2: b, 3: c}
    for row, slot in enumerate(row_slots.tolist()):
        expected = (torch.zeros(16) if slot == 0 else reference_delta(
            by_slot[slot], 1, ("q_proj", "k_proj", "v_proj"), x[row:row + 1], (8, 4, 4),
            scales[slot])[0])
        torch.testing.assert_close(y[row], expected, rtol=1e-5, atol=1e-5)
    down_x, down_y = torch.randn(len(row_slots), 12), torch.zeros(len(row_slots), 8)
    plan.add_delta(0, "down", down_x, down_y)
    for row, slot in enumerate(row_slots.tolist()):
        if slot == 2:
            expected = reference_delta(b, 0, ("down_proj",), down_x[row:row + 1], (8,),
                                       scales[2])[0]
            torch.testing.assert_close(down_y[row], expected, rtol=1e-5, atol=1e-5)
        else:  # adapters a and c do not target down_proj
            assert torch.count_nonzero(down_y[row]) == 0


def test_base_only_batch_has_no_plan_and_reload_replaces_weights() -> None:
    slots = table()
    assert slots.plan(torch.tensor([0, 0, 0])) is None
    first = adapter("first", 4, {"q_proj": (8, 8)}, seed=1)
    second = adapter("second", 2, {"v_proj": (8, 4)}, seed=2)
    slots.load(1, first)
    x = torch.randn(2, 8)
    before = torch.zeros(2, 16)
    plan = slots.plan(torch.tensor([1, 1]))
    assert plan is not None
    plan.add_delta(0, "qkv", x, before)
    slots.load(1, second)  # in place, into the same slot
    after = torch.zeros(2, 16)
    plan = slots.plan(torch.tensor([1, 1]))
    assert plan is not None
    plan.add_delta(0, "qkv", x, after)
    assert torch.count_nonzero(after[:, :8]) == 0  # q_proj of "first" is gone
    torch.testing.assert_close(after, reference_delta(second, 0, ("q_proj", "k_proj", "v_proj"),
                                                      x, (8, 4, 4)), rtol=1e-5, atol=1e-5)
    slots.clear(1)
    cleared = torch.zeros(2, 16)
    plan = slots.plan(torch.tensor([1, 1]))
    assert plan is None or (plan.add_delta(0, "qkv", x, cleared) is None
                            and torch.count_nonzero(cleared) == 0)


@pytest.mark.parametrize(("weights", "message"), [
    (adapter("wide", 8, {"q_proj": (8, 8)}, seed=1), "rank 8 exceeds the maximum 4"),
    (adapter("mlp", 2, {"up_proj": (8, 12)}, seed=1), "outside the servable targets"),
    (adapter("shape", 2, {"q_proj": (6, 8)}, seed=1), "maps 6->8, the base projection is 8->8"),
    (adapter("deep", 2, {"q_proj": (8, 8)}, seed=1, layers=3), "layer 2 does not exist"),
])
def test_incompatible_adapters_are_refused_with_the_reason(weights: LoraAdapterWeights,
                                                           message: str) -> None:
    slots = table()
    with pytest.raises(AdapterIncompatibleError, match=message):
        slots.load(1, weights)
